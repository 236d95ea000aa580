"""`kvsched.loadgen` and `kvsched bench`: the open-loop load generator.

The real server (`kvsched serve`) is tested end to end elsewhere. Here a small real
OpenAI-style server (Starlette, served by uvicorn on a loopback port in a thread) streams
Server-Sent Events the way vLLM does, split into awkward network chunks, with a fixed
delay before every token. Its behaviour is chosen by max_tokens, so one workload mixes
good requests and every kind of failure:

    7   HTTP 400 with an OpenAI error body
    5   a good stream without the usage chunk (tokens must be counted from chunks)
    9   a stream that ends cleanly but without `data: [DONE]`
    13  the server crashes after one token (connection cut mid-body)
    15  an error event inside the 200 stream after one token (vLLM's way to report one)
    11  no answer for 5 s (the client's --timeout must fire)
    any other n: n tokens, then usage, then [DONE]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from kvsched.cli import main
from kvsched.loadgen import (
    WORDS,
    BenchConfig,
    BenchError,
    RequestRecord,
    SSEParser,
    records_frame,
    request_body,
    run_benchmark,
    summarize_records,
    text_prompt,
    token_id_prompt,
)
from kvsched.request import Request
from kvsched.results import json_safe

DELAY_S = 0.02  # the test server's sleep before every token
MODEL = "test-model"
# Streams asking for GATE_TOKENS tokens are held until GATE_SIZE of them are in flight (or
# GATE_TIMEOUT_S passes, which the server logs): an event to synchronise on, not a clock.
GATE_TOKENS, GATE_SIZE, GATE_TIMEOUT_S = 17, 4, 30.0


# --- a real OpenAI-style streaming server -------------------------------------------------
def _event(obj) -> list[bytes]:
    """One SSE event, cut in two mid-JSON so the client must join network chunks."""
    raw = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
    cut = len(raw) // 2
    return [raw[:cut], raw[cut:]]


def _make_app(log: list) -> Starlette:
    gate = {"arrived": 0, "open": asyncio.Event()}

    async def models(request: HTTPRequest):
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}, {"id": "other"}]})

    async def generate(request: HTTPRequest):
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        log.append({"path": request.url.path, "auth": request.headers.get("authorization"), "body": body})
        n = body["max_tokens"]
        if n == 7:
            return JSONResponse({"error": {"message": "max_tokens 7 is not allowed", "type": "BadRequestError"}},
                                status_code=400)
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())

        def chunk(text, finish=None):
            if chat:
                return {"object": "chat.completion.chunk", "model": MODEL,
                        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
            return {"object": "text_completion", "model": MODEL,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

        if n == GATE_TOKENS:
            gate["arrived"] += 1
            if gate["arrived"] >= GATE_SIZE:
                gate["open"].set()

        async def stream():
            if n == 11:
                await asyncio.sleep(5)
            if n == GATE_TOKENS:
                try:
                    await asyncio.wait_for(gate["open"].wait(), GATE_TIMEOUT_S)
                except TimeoutError:
                    log.append({"gate_timed_out": True})
            if chat:  # vLLM's first chat chunk: the role and empty content, not a token
                for part in _event({"object": "chat.completion.chunk", "model": MODEL,
                                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}):
                    yield part
            for i in range(n):
                await asyncio.sleep(DELAY_S)
                for part in _event(chunk(f" tok{i}é")):
                    yield part
                if n == 13:
                    raise RuntimeError("the test server crashes mid-stream")
                if n == 15:
                    for part in _event({"error": {"message": "engine died", "code": 500}}):
                        yield part
                    return
            for part in _event(chunk("", "length")):  # the finish chunk carries no text
                yield part
            if n == 9:
                return
            if n != 5:
                for part in _event({"object": "text_completion", "choices": [],
                                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                              "total_tokens": prompt_tokens + n}}):
                    yield part
            for part in _event("[DONE]"):
                yield part

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", generate, methods=["POST"]),
                             Route("/v1/chat/completions", generate, methods=["POST"])])


@pytest.fixture
def server(live_server):
    log: list = []
    return SimpleNamespace(url=live_server(_make_app(log)), log=log)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _bench(requests, **config):
    return asyncio.run(run_benchmark(requests, BenchConfig(**config)))


# --- the summary is a pure function of the records ----------------------------------------
def _records() -> list[RequestRecord]:
    r0 = RequestRecord(0, 0.0, 20, 5, send_time=0.0, first_token_time=0.1, end_time=0.5, num_output_tokens=5,
                       itl_s=[0.1, 0.1, 0.1, 0.1], success=True, http_status=200)
    r1 = RequestRecord(1, 1.0, 10, 3, send_time=1.0, first_token_time=1.3, end_time=2.0, num_prompt_tokens=12,
                       num_output_tokens=3, itl_s=[0.2, 0.5], success=True, http_status=200)
    r2 = RequestRecord(2, 2.0, 7, 1, send_time=2.0, first_token_time=2.2, end_time=2.2, num_output_tokens=1,
                       success=True, http_status=200)
    r3 = RequestRecord(3, 2.5, 30, 9, send_time=3.0, end_time=4.0, error="HTTP 500: boom", http_status=500)
    return [r0, r1, r2, r3]


def test_summary_against_hand_computed_values():
    s = summarize_records(_records(), percentiles=(50, 90, 99))
    ap = pytest.approx
    assert (s["num_requests"], s["completed"], s["failed"]) == (4, 3, 1)
    assert s["duration_s"] == 4.0  # the last end time, the failed request's
    assert s["total_output_tokens"] == 5 + 3 + 1
    assert s["total_input_tokens"] == 20 + 12 + 7  # usage (12) beats the asked length (10)
    assert s["request_throughput"] == ap(3 / 4)
    assert s["output_throughput"] == ap(9 / 4)
    assert s["total_token_throughput"] == ap((39 + 9) / 4)
    # TTFT 100, 300, 200 ms: the failed request is left out.
    assert s["mean_ttft_ms"] == ap(200) and s["median_ttft_ms"] == ap(200)
    assert s["std_ttft_ms"] == ap(math.sqrt(20000 / 3))
    assert s["p90_ttft_ms"] == ap(280)  # linear interpolation: 200 + 0.8 * 100
    # TPOT = (e2e - ttft) / (n - 1): (0.5-0.1)/4 = 100 ms, (1.0-0.3)/2 = 350 ms; one-token requests have none.
    assert s["mean_tpot_ms"] == ap(225) and s["p50_tpot_ms"] == ap(225)
    # ITL pools every gap of every completed request: 100 x4, 200, 500 ms.
    assert s["mean_itl_ms"] == ap(1100 / 6) and s["median_itl_ms"] == ap(100)
    assert s["p99_itl_ms"] == ap(485)  # 200 + 0.95 * 300
    assert s["mean_e2el_ms"] == ap(1700 / 3) and s["median_e2el_ms"] == ap(500)
    # Send lag counts every request that left, failed ones too.
    assert s["mean_send_lag_ms"] == ap(125) and s["max_send_lag_ms"] == ap(500)


def test_summary_percentile_names_and_empty_runs():
    s = summarize_records(_records(), percentiles=(50, 99.9))
    assert {"p50_ttft_ms", "p99.9_ttft_ms", "p99.9_itl_ms", "p99.9_e2el_ms"} <= s.keys()
    assert "p90_ttft_ms" not in s
    empty = summarize_records([])
    assert (empty["completed"], empty["failed"], empty["duration_s"]) == (0, 0, 0.0)
    assert math.isnan(empty["mean_ttft_ms"]) and math.isnan(empty["request_throughput"])
    # JSON output and files carry null, never NaN.
    text = json.dumps(json_safe(empty), allow_nan=False)
    assert json.loads(text)["mean_ttft_ms"] is None


def test_records_frame_columns_and_per_request_metrics():
    df = records_frame(list(reversed(_records())))
    assert df["request_id"].tolist() == [0, 1, 2, 3]
    assert df["ttft_s"].iloc[1] == pytest.approx(0.3)
    assert df["tpot_s"].iloc[1] == pytest.approx(0.35)
    assert math.isnan(df["tpot_s"].iloc[2])  # one token: no TPOT
    assert df["itl_mean_s"].iloc[1] == pytest.approx(0.35) and df["itl_max_s"].iloc[1] == pytest.approx(0.5)
    assert df["num_itl"].tolist() == [4, 2, 0, 0]
    assert df["num_prompt_tokens"].isna().tolist() == [True, False, True, True]
    assert df["success"].tolist() == [True, True, True, False]
    assert df["error"].tolist() == ["", "", "", "HTTP 500: boom"]
    assert df["http_status"].tolist() == [200, 200, 200, 500]


# --- Server-Sent Events ------------------------------------------------------------------
STREAM = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"choices":[{"index":0,"text":"caf\xc3\xa9 \xf0\x9f\x98\x80"}]}\r\n\r\n'
    b'data:{"choices":[{"index":0,"text":"no space"}]}\n\n'
    b"event: message\nid: 7\ndata: first line\ndata: second line\n\n"
    b"data: cr only\r\r"
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)
EVENTS = [
    '{"choices":[{"index":0,"text":"café 😀"}]}',
    '{"choices":[{"index":0,"text":"no space"}]}',
    "first line\nsecond line",
    "cr only",
    '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    "[DONE]",
]


def _parse(chunks) -> list[str]:
    parser = SSEParser()
    out = [event for chunk in chunks for event in parser.feed(chunk)]
    return out + parser.close()


def test_sse_parser_whole_stream():
    assert _parse([STREAM]) == EVENTS


def test_sse_parser_any_split_gives_the_same_events():
    # Every cut point: inside "data:", inside a UTF-8 character, between CR and LF, ...
    for cut in range(len(STREAM) + 1):
        assert _parse([STREAM[:cut], STREAM[cut:]]) == EVENTS, cut
    assert _parse([STREAM[i:i + 1] for i in range(len(STREAM))]) == EVENTS
    rng = np.random.default_rng(0)
    for _ in range(50):
        cuts = sorted(rng.choice(len(STREAM), size=5, replace=False).tolist())
        assert _parse([STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]) == EVENTS


def test_sse_parser_emits_events_as_soon_as_complete():
    parser = SSEParser()
    assert parser.feed(b"data: one\n") == []  # not complete before its blank line
    assert parser.feed(b"\ndata: tw") == ["one"]
    assert parser.feed(b"o\n\n") == ["two"]
    # A last event without its blank line is still delivered at the end of the stream.
    assert parser.feed(b"data: [DONE]\n") == []
    assert parser.close() == ["[DONE]"]


# --- prompts -----------------------------------------------------------------------------
def test_token_id_prompts_exact_and_reproducible():
    for n in (1, 17, 4096):
        ids = token_id_prompt(3, 42, n)
        assert len(ids) == n and all(isinstance(i, int) and 100 <= i < 1000 for i in ids)
    assert token_id_prompt(3, 42, 64) == token_id_prompt(3, 42, 64)
    assert token_id_prompt(3, 42, 64) == np.random.default_rng([3, 42]).integers(100, 1000, 64).tolist()
    assert token_id_prompt(3, 42, 64) != token_id_prompt(3, 43, 64)
    assert token_id_prompt(3, 42, 64) != token_id_prompt(4, 42, 64)


def test_text_prompts_have_prompt_len_words():
    text = text_prompt(0, 5, 300)
    words = text.split(" ")
    assert len(words) == 300 and set(words) <= set(WORDS)
    assert text == text_prompt(0, 5, 300) != text_prompt(0, 6, 300)


def test_request_bodies():
    req = Request(3, 0.5, 12, 8)
    body = request_body(req, BenchConfig(seed=1), "m")
    assert body["prompt"] == token_id_prompt(1, 3, 12)
    assert body["max_tokens"] == 8 and body["ignore_eos"] is True and body["model"] == "m"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    chat = request_body(req, BenchConfig(endpoint="chat", ignore_eos=False), "m")
    assert chat["messages"] == [{"role": "user", "content": text_prompt(0, 3, 12)}]
    assert "ignore_eos" not in chat and "prompt" not in chat


def test_config_checks_and_url_normalisation():
    with pytest.raises(BenchError, match="completions endpoint"):
        BenchConfig(endpoint="chat", prompt_kind="ids")
    with pytest.raises(BenchError, match="concurrency"):
        BenchConfig(max_concurrency=0)
    assert BenchConfig(url="http://h:1/v1/").url == "http://h:1"
    assert BenchConfig(endpoint="chat").prompt_kind == "text"
    assert "api_key" not in json.dumps(BenchConfig(api_key="secret").to_json()).replace("api_key_set", "")


# --- against the real test server --------------------------------------------------------
def test_records_timings_and_failures_do_not_abort(server):
    # output lengths: good, HTTP 400, no usage, no [DONE], crash mid-stream, good, error event
    outs = [4, 7, 5, 9, 13, 3, 15]
    reqs = [Request(i, 0.02 * i, 10 + i, o) for i, o in enumerate(outs)]
    start = len(server.log)
    result = _bench(reqs, url=server.url, seed=5, api_key="sk-test")
    recs = {r.request_id: r for r in result.records}
    assert [r.request_id for r in result.records] == list(range(7))
    assert result.model == MODEL  # the first model GET /v1/models lists

    good = recs[0]
    assert good.success and good.error == "" and good.http_status == 200
    assert good.num_output_tokens == 4 and good.num_prompt_tokens == 10
    assert len(good.itl_s) == 3  # gaps between the 4 text chunks; the empty finish chunk is no token
    assert good.ttft_s >= 0.8 * DELAY_S and all(gap >= 0.5 * DELAY_S for gap in good.itl_s)
    assert good.send_time <= good.first_token_time <= good.end_time
    assert good.e2e_latency_s >= 0.8 * 4 * DELAY_S
    assert good.tpot_s == pytest.approx((good.e2e_latency_s - good.ttft_s) / 3)
    assert good.first_token_time + sum(good.itl_s) == pytest.approx(good.end_time, abs=0.05)

    bad = recs[1]
    assert not bad.success and bad.http_status == 400
    assert bad.error == "HTTP 400: max_tokens 7 is not allowed"
    assert bad.num_output_tokens == 0 and math.isnan(bad.first_token_time) and bad.end_time >= bad.send_time

    no_usage = recs[2]
    assert no_usage.success and no_usage.num_output_tokens == 5 and no_usage.num_prompt_tokens is None

    cut = recs[3]
    assert not cut.success and "[DONE]" in cut.error and cut.http_status == 200

    crash = recs[4]
    # httpx reports the cut body; the record keeps the exception's type and message.
    assert not crash.success and crash.http_status == 200
    assert crash.num_output_tokens == 1 and crash.first_token_time > crash.send_time  # what came before the cut
    assert crash.error.startswith("RemoteProtocolError: ") or "[DONE]" in crash.error, crash.error

    assert recs[5].success and recs[5].num_output_tokens == 3

    event = recs[6]
    assert not event.success and event.error == "error in stream: engine died" and event.num_output_tokens == 1

    s = result.summary
    assert (s["completed"], s["failed"]) == (3, 4)
    assert s["total_output_tokens"] == 4 + 5 + 3
    assert s["total_input_tokens"] == 10 + 12 + 15  # usage for 0 and 5; the asked length for 2

    sent = server.log[start:]
    assert len(sent) == 7
    for entry in sent:
        body = entry["body"]
        rid = body["max_tokens"]  # unique per request here
        req = reqs[outs.index(rid)]
        assert entry["path"] == "/v1/completions" and entry["auth"] == "Bearer sk-test"
        assert body["model"] == MODEL and body["prompt"] == token_id_prompt(5, req.request_id, req.prompt_len)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True


def test_chat_endpoint_skips_the_role_chunk(server):
    reqs = [Request(0, 0.0, 6, 4), Request(1, 0.0, 9, 2)]
    start = len(server.log)
    result = _bench(reqs, url=server.url + "/v1", model=MODEL, endpoint="chat", ignore_eos=False)
    for rec in result.records:
        assert rec.success and rec.num_output_tokens == rec.output_len
        assert rec.num_prompt_tokens == rec.prompt_len  # words == tokens for the test server
        assert len(rec.itl_s) == rec.output_len - 1  # a counted role chunk would add a gap
    bodies = [e["body"] for e in server.log[start:]]
    assert all(e["path"] == "/v1/chat/completions" and e["auth"] is None for e in server.log[start:])
    assert all("ignore_eos" not in b and b["messages"][0]["role"] == "user" for b in bodies)


def test_open_loop_sends_on_schedule_and_concurrency_cap_serialises(server):
    # The server holds these streams until all four requests are in flight: an open loop sends
    # each at its arrival time without waiting for the others' responses; a client that waited
    # would leave the gate shut until it timed out.
    reqs = [Request(i, 0.04 * i, 8, GATE_TOKENS) for i in range(GATE_SIZE)]
    calls = []
    result = asyncio.run(run_benchmark(reqs, BenchConfig(url=server.url, model=MODEL), on_record=calls.append))
    recs = result.records
    assert len(calls) == 4 and all(r.success for r in recs)
    assert not any(e.get("gate_timed_out") for e in server.log)  # all four were in flight together
    assert max(r.send_time for r in recs) < min(r.first_token_time for r in recs)
    for r in recs:
        assert r.send_time >= r.arrival_time  # never before its arrival time

    # Each response takes at least 10 x 20 ms, far longer than the 40 ms between arrivals.
    reqs = [Request(i, 0.04 * i, 8, 10) for i in range(4)]
    capped = _bench(reqs, url=server.url, model=MODEL, max_concurrency=1).records
    for prev, nxt in itertools.pairwise(capped):
        assert nxt.send_time >= prev.end_time - 1e-3  # one at a time
    assert capped[3].send_lag_s > 0.3  # it waited for three full responses


def test_timeout_is_recorded(server):
    reqs = [Request(0, 0.0, 4, 11), Request(1, 0.0, 4, 2)]
    result = _bench(reqs, url=server.url, model=MODEL, timeout_s=0.3)
    slow, fast = result.records
    # The headers (200) came at once; the body never did.
    assert not slow.success and slow.error == "timeout: no complete response within 0.3 s"
    assert slow.http_status == 200 and slow.num_output_tokens == 0
    assert 0.25 <= slow.e2e_latency_s < 2.0
    assert fast.success


def test_no_model_to_use_fails_before_sending(server):
    start = len(server.log)
    # Under this prefix the server has no /v1/models: nothing to pick without --model.
    with pytest.raises(BenchError, match=r"cannot find a model .*HTTP 404.*--model"):
        _bench([Request(0, 0.0, 4, 2)], url=server.url + "/elsewhere")
    assert len(server.log) == start


def test_unreachable_server_fails_before_sending():
    url = _closed_port_url()
    with pytest.raises(BenchError, match="cannot reach"):
        _bench([Request(0, 0.0, 4, 2)], url=url, model="m", timeout_s=5)


# --- the command line --------------------------------------------------------------------
def _cli(exe, *args) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "bench", *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=60)


def test_cli_writes_files_and_json(server, exe, tmp_path):
    out = tmp_path / "run"
    proc = _cli(exe, "--url", server.url, "--trace", "synthetic:n=4,rate=50,prompt=16,output=3",
                "--output", out, "--json", "--no-progress", "--percentiles", "50,99.9")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert (summary["completed"], summary["failed"], summary["total_output_tokens"]) == (4, 0, 12)
    assert summary["p99.9_ttft_ms"] > 0
    assert json.loads((out / "summary.json").read_text())["completed"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == MODEL and config["url"] == server.url and config["endpoint"] == "completions"
    assert config["workload"]["trace"].startswith("synthetic:") and config["seed"] == 0
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == 4 and df["success"].all() and (df["num_output_tokens"] == 3).all()


def test_cli_table_csv_and_all_failed_exit_code(server, tmp_path, capsys):
    # In-process main(): the same code path as the console script, without another interpreter start.
    code = main(["bench", "--url", server.url, "--trace", "synthetic:n=2,rate=50,prompt=8,output=2",
                 "--output", str(tmp_path), "--format", "csv", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "TTFT" in out and "output throughput" in out and f"results written to {tmp_path}" in out
    df = pd.read_csv(tmp_path / "requests.csv")
    assert len(df) == 2 and df["success"].all()
    # Every request refused: recorded, summarised, and exit code 1.
    code = main(["bench", "--url", server.url, "--trace", "synthetic:n=2,rate=50,prompt=8,output=7", "--json",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["failed"] == 2
    assert "2 request(s) failed: HTTP 400: max_tokens 7 is not allowed" in captured.err


@pytest.mark.parametrize(("args", "fragment"), [
    (["--endpoint", "chat", "--prompt-kind", "ids"], "--prompt-kind ids"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--percentiles", "50,101"], "--percentiles"),
    (["--url", "CLOSED"], "cannot reach"),
])
def test_cli_user_errors(args, fragment, capsys):
    args = [_closed_port_url() if a == "CLOSED" else a for a in args]
    code = main(["bench", "--trace", "synthetic:n=2,rate=5,prompt=8,output=2", "--no-progress", *args])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("kvsched: error: ") and fragment in line
