"""Open-loop load generator for OpenAI-compatible servers (`kvsched bench`).

The simulator predicts what a scheduler does to a workload; this module measures what a
real server does to the same workload. It replays a trace against any server that speaks
the OpenAI completions or chat-completions API (vLLM, SGLang, kvsched's own server, ...):
every request is sent at its trace arrival time whatever is still outstanding (open loop,
as in vLLM's `benchmarks/benchmark_serving.py`), its response is streamed, and the time of
every text chunk is kept. The metrics and their names follow vLLM's serving benchmark:

  TTFT   first chunk carrying text, measured from the moment the request was sent
  TPOT   (e2e - TTFT) / (output tokens - 1), per request with more than one output token
  ITL    gaps between successive chunks carrying text, pooled over all requests
  E2EL   from sending the request to receiving `data: [DONE]`

Pieces, each usable on its own: `SSEParser` (bytes in, event data out), the prompt
builders `token_id_prompt` / `text_prompt`, `summarize_records` (a pure function of the
per-request records), the async core `run_benchmark`, and the file writer
`save_benchmark`. The CLI (`kvsched.cli.cmd_bench`) only wires them together.
Documentation: docs/bench.md.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import datetime
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvsched.request import Request

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
PROMPT_KINDS = ("ids", "text")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
# Ids below 100 are where tokenizers keep special and byte tokens; every vocabulary the
# benchmark targets has more than 1000 entries, so 100..999 are ordinary tokens anywhere.
PROMPT_ID_LOW, PROMPT_ID_HIGH = 100, 1000
# Short, frequent words: nearly every BPE vocabulary has " word" as one token, so N words
# make about N prompt tokens whatever the server's tokenizer.
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part over new sound take only little work know place year live me back give most very "
    "after thing our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put end does "
    "another well large must big even such because turn here why ask went men read need land different home "
    "us move try kind hand picture again change off play spell air away animal house point page letter "
    "mother answer found study still learn should world high every near add food between own below country "
    "plant last school father keep tree never start city earth eye light thought head under story saw left "
    "few while along might close something seem next hard open example begin life always those both paper "
    "together got group often run important until children side feet car mile night walk white sea began grow"
)
WORDS = tuple(_WORD_TEXT.split())


class BenchError(ValueError):
    """A problem found before any request is sent: bad settings, or a server that cannot be used."""


# --- Server-Sent Events -----------------------------------------------------------------
_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental Server-Sent Events parser: feed raw bytes as they arrive, get event data.

    Network reads split the stream anywhere (inside a line, inside a UTF-8 character,
    between the CR and LF of one line end), so bytes are decoded incrementally and only
    complete lines are interpreted. An event is dispatched at the blank line that ends it;
    its `data:` lines are joined with newlines (WHATWG HTML, "event stream interpretation").
    Comments (`: ping`) and the `event`, `id`, `retry` fields are skipped: OpenAI streams
    carry everything in `data`.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event this chunk completes, in order."""
        self._buffer += self._decoder.decode(chunk)
        return self._drain(final=False)

    def close(self) -> list[str]:
        """End of stream: the events still pending.

        The server-sent events standard (WHATWG HTML) drops an event without its closing blank line; a server that ends the body
        right after `data: [DONE]\\n` would then look truncated, so the last one is kept."""
        self._buffer += self._decoder.decode(b"", final=True)
        events = self._drain(final=True)
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer = ""
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _drain(self, *, final: bool) -> list[str]:
        events: list[str] = []
        pos = 0
        buf = self._buffer
        while (m := _LINE_END.search(buf, pos)) is not None:
            # A CR at the very end may be the first half of a CRLF still in flight.
            if m.group() == "\r" and m.end() == len(buf) and not final:
                break
            self._line(buf[pos:m.start()], events)
            pos = m.end()
        self._buffer = buf[pos:]
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))


# --- prompts ----------------------------------------------------------------------------
def token_id_prompt(seed: int, request_id: int, prompt_len: int) -> list[int]:
    """Exactly `prompt_len` token ids, the same for the same (seed, request id) on any machine."""
    rng = np.random.default_rng([seed, request_id])
    return rng.integers(PROMPT_ID_LOW, PROMPT_ID_HIGH, prompt_len).tolist()


def text_prompt(seed: int, request_id: int, prompt_len: int) -> str:
    """About `prompt_len` tokens of common English words (one word is usually one token).

    Only approximate: the server's tokenizer decides, and a chat template adds its own
    tokens around the message. The usage the server reports gives the exact count."""
    rng = np.random.default_rng([seed, request_id])
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), prompt_len).tolist())


# --- per-request records ----------------------------------------------------------------
@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it; every `*_time` is in seconds since the benchmark start."""

    request_id: int
    arrival_time: float  # scheduled send offset from the trace
    prompt_len: int  # asked for
    output_len: int  # asked for (max_tokens)
    send_time: float = math.nan
    first_token_time: float = math.nan  # first chunk with non-empty text
    end_time: float = math.nan  # `data: [DONE]` received, or the failure noticed
    num_prompt_tokens: int | None = None  # from the server's usage, when it reports one
    num_output_tokens: int = 0  # usage.completion_tokens, else chunks with text (so far, if it failed)
    itl_s: list[float] = field(default_factory=list)  # gaps between successive text chunks
    success: bool = False
    error: str = ""
    http_status: int | None = None

    @property
    def ttft_s(self) -> float:
        return self.first_token_time - self.send_time

    @property
    def e2e_latency_s(self) -> float:
        return self.end_time - self.send_time

    @property
    def tpot_s(self) -> float:
        if self.num_output_tokens <= 1 or math.isnan(self.first_token_time):
            return math.nan
        return (self.e2e_latency_s - self.ttft_s) / (self.num_output_tokens - 1)

    @property
    def send_lag_s(self) -> float:
        """How late the request left: client overload, or a --max-concurrency wait."""
        return self.send_time - self.arrival_time


TABLE_COLUMNS = (
    "request_id", "arrival_time", "send_time", "first_token_time", "end_time", "prompt_len", "num_prompt_tokens",
    "output_len", "num_output_tokens", "ttft_s", "tpot_s", "e2e_latency_s", "itl_mean_s", "itl_max_s",
    "num_itl", "success", "error", "http_status",
)


def records_frame(records: Sequence[RequestRecord]):
    """One row per request, in request-id order (columns: TABLE_COLUMNS)."""
    import pandas as pd

    rows = sorted(records, key=lambda r: r.request_id)
    nan = math.nan
    df = pd.DataFrame({
        "request_id": np.array([r.request_id for r in rows], dtype=np.int64),
        "arrival_time": np.array([r.arrival_time for r in rows], dtype=np.float64),
        "send_time": np.array([r.send_time for r in rows], dtype=np.float64),
        "first_token_time": np.array([r.first_token_time for r in rows], dtype=np.float64),
        "end_time": np.array([r.end_time for r in rows], dtype=np.float64),
        "prompt_len": np.array([r.prompt_len for r in rows], dtype=np.int64),
        # Nullable: a server need not report usage, and a failed request has none.
        "num_prompt_tokens": pd.array([r.num_prompt_tokens for r in rows], dtype="Int64"),
        "output_len": np.array([r.output_len for r in rows], dtype=np.int64),
        "num_output_tokens": np.array([r.num_output_tokens for r in rows], dtype=np.int64),
        "ttft_s": np.array([r.ttft_s for r in rows], dtype=np.float64),
        "tpot_s": np.array([r.tpot_s for r in rows], dtype=np.float64),
        "e2e_latency_s": np.array([r.e2e_latency_s for r in rows], dtype=np.float64),
        "itl_mean_s": np.array([float(np.mean(r.itl_s)) if r.itl_s else nan for r in rows], dtype=np.float64),
        "itl_max_s": np.array([max(r.itl_s) if r.itl_s else nan for r in rows], dtype=np.float64),
        "num_itl": np.array([len(r.itl_s) for r in rows], dtype=np.int64),
        "success": np.array([r.success for r in rows], dtype=bool),
        "error": [r.error for r in rows],
        "http_status": pd.array([r.http_status for r in rows], dtype="Int64"),
    })
    return df[list(TABLE_COLUMNS)]


# --- summary ----------------------------------------------------------------------------
def percentile_label(p: float) -> str:
    """vLLM's key spelling: 99 -> "p99", 99.9 -> "p99.9"."""
    return f"p{int(p)}" if float(p) == int(p) else f"p{p:g}"


def _stats(name: str, values_ms: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    empty = arr.size == 0
    out = {
        f"mean_{name}": math.nan if empty else float(arr.mean()),
        f"median_{name}": math.nan if empty else float(np.median(arr)),
        f"std_{name}": math.nan if empty else float(arr.std()),  # population std, as vLLM
    }
    for p in percentiles:
        out[f"{percentile_label(p)}_{name}"] = math.nan if empty else float(np.percentile(arr, p))
    return out


def summarize_records(records: Sequence[RequestRecord], *, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                      duration_s: float | None = None) -> dict:
    """Headline numbers of a benchmark, from its records alone.

    Latencies and token counts come from successful requests only (a failed request has no
    meaningful latency). `duration_s` defaults to the last request's end time: the benchmark
    starts at 0, so that is the time from the first send to the last response, vLLM's
    benchmark duration. Input tokens are the server's usage counts where it reported them,
    else the prompt lengths asked for. NaN marks a statistic with no sample."""
    ok = [r for r in records if r.success]
    if duration_s is None:
        ends = [r.end_time for r in records if not math.isnan(r.end_time)]
        duration_s = max(ends, default=0.0)
    total_in = sum(r.num_prompt_tokens if r.num_prompt_tokens is not None else r.prompt_len for r in ok)
    total_out = sum(r.num_output_tokens for r in ok)

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else math.nan

    lags_ms = [1e3 * r.send_lag_s for r in records if not math.isnan(r.send_time)]
    summary = {
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": int(total_in),
        "total_output_tokens": int(total_out),
        "duration_s": float(duration_s),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
        "mean_send_lag_ms": float(np.mean(lags_ms)) if lags_ms else math.nan,
        "max_send_lag_ms": max(lags_ms, default=math.nan),
        "percentiles": [float(p) for p in percentiles],
    }
    summary.update(_stats("ttft_ms", [1e3 * r.ttft_s for r in ok if not math.isnan(r.ttft_s)], percentiles))
    summary.update(_stats("tpot_ms", [1e3 * r.tpot_s for r in ok if not math.isnan(r.tpot_s)], percentiles))
    summary.update(_stats("itl_ms", [1e3 * gap for r in ok for gap in r.itl_s], percentiles))
    summary.update(_stats("e2el_ms", [1e3 * r.e2e_latency_s for r in ok], percentiles))
    return summary


def error_digest(records: Sequence[RequestRecord], top: int = 3) -> list[tuple[str, int]]:
    """The most frequent failure messages with their counts."""
    return Counter(r.error for r in records if not r.success).most_common(top)


# --- the benchmark ----------------------------------------------------------------------
@dataclass
class BenchConfig:
    """Everything that decides what is sent; `api_key` is never written to files."""

    url: str = DEFAULT_URL
    model: str | None = None  # None: the first model the server lists
    endpoint: str = "completions"
    prompt_kind: str | None = None  # None: ids for completions, text for chat
    seed: int = 0
    api_key: str | None = None
    ignore_eos: bool = True
    max_concurrency: int | None = None
    timeout_s: float = 600.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        # Users paste OpenAI "base URLs"; the endpoint paths below already carry /v1.
        self.url = self.url.removesuffix("/v1")
        if self.endpoint not in ENDPOINTS:
            raise BenchError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
        if self.prompt_kind is None:
            self.prompt_kind = "text" if self.endpoint == "chat" else "ids"
        if self.prompt_kind not in PROMPT_KINDS:
            raise BenchError(f"prompt kind must be one of {', '.join(PROMPT_KINDS)}, got {self.prompt_kind!r}")
        if self.endpoint == "chat" and self.prompt_kind == "ids":
            raise BenchError("token-id prompts need the completions endpoint: chat messages are text")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BenchError(f"max concurrency must be >= 1, got {self.max_concurrency}")
        if not self.timeout_s > 0:
            raise BenchError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if not all(0 <= p <= 100 for p in self.percentiles):
            raise BenchError(f"percentiles must lie in 0..100, got {list(self.percentiles)}")
        self.percentiles = tuple(float(p) for p in self.percentiles)

    def to_json(self, model: str | None = None) -> dict:
        return {
            "url": self.url, "model": model or self.model, "endpoint": self.endpoint,
            "path": ENDPOINTS[self.endpoint], "prompt_kind": self.prompt_kind, "seed": self.seed,
            "ignore_eos": self.ignore_eos, "max_concurrency": self.max_concurrency, "timeout_s": self.timeout_s,
            "percentiles": list(self.percentiles), "api_key_set": self.api_key is not None,
        }


@dataclass
class BenchResult:
    records: list[RequestRecord]
    summary: dict
    model: str
    started_at: str  # UTC, ISO 8601: lines the run up with server logs


def request_body(req: Request, config: BenchConfig, model: str) -> dict:
    """The JSON body of one streamed request."""
    if config.prompt_kind == "ids":
        prompt: list[int] | str = token_id_prompt(config.seed, req.request_id, int(req.prompt_len))
    else:
        prompt = text_prompt(config.seed, req.request_id, int(req.prompt_len))
    body: dict = {"model": model, "max_tokens": int(req.output_len), "stream": True,
                  "stream_options": {"include_usage": True}}
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if config.ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: exactly max_tokens tokens, as the trace asks
    return body


def _describe(exc: BaseException) -> str:
    # Several httpx exceptions (timeouts above all) carry an empty message.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_message(body: bytes) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:500]
    return _message_of(obj) or text[:500]


def _message_of(obj) -> str | None:
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if err is not None:
        return str(err)
    if obj.get("object") == "error":
        return str(obj.get("message") or obj)
    if "detail" in obj:
        return str(obj["detail"])
    return None


class _StreamError(Exception):
    """The server reported an error inside a 200 stream, or sent something unreadable."""


def _consume(rec: RequestRecord, data: str, now: float, endpoint: str, state: dict) -> bool:
    """Apply one event's data to the record; True at `[DONE]`."""
    if data.strip() == "[DONE]":
        return True
    try:
        obj = json.loads(data)
    except ValueError:
        raise _StreamError(f"unreadable stream event {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise _StreamError(f"unreadable stream event {data[:200]!r}")
    if (msg := _message_of(obj)) is not None and "choices" not in obj:
        raise _StreamError(f"error in stream: {msg}")
    usage = obj.get("usage")
    if isinstance(usage, dict):  # the last one wins: continuous usage stats grow
        if usage.get("prompt_tokens") is not None:
            rec.num_prompt_tokens = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            state["usage_tokens"] = int(usage["completion_tokens"])
    choices = obj.get("choices") or []
    if choices:
        choice = choices[0]
        text = (choice.get("delta") or {}).get("content") if endpoint == "chat" else choice.get("text")
        # Role-only chat deltas and empty finish chunks are not tokens.
        if text:
            if state["chunks"] == 0:
                rec.first_token_time = now
            else:
                rec.itl_s.append(now - state["last_time"])
            state["chunks"] += 1
            state["last_time"] = now
            rec.num_output_tokens = state["chunks"]  # so far; a failed request keeps what it got
    return False


async def _stream_one(client, path: str, payload: bytes, rec: RequestRecord, clock: Callable[[], float],
                      endpoint: str) -> None:
    state = {"chunks": 0, "last_time": math.nan, "usage_tokens": None}
    async with client.stream("POST", path, content=payload) as resp:
        rec.http_status = resp.status_code
        if not 200 <= resp.status_code < 300:
            rec.error = f"HTTP {resp.status_code}: {_error_message(await resp.aread())}"
            return
        parser = SSEParser()
        done = False
        async for chunk in resp.aiter_bytes():
            now = clock()  # one read, one time: events that arrived together share it
            for data in parser.feed(chunk):
                if _consume(rec, data, now, endpoint, state):
                    done = True
                    break
            if done:
                break
        if not done:
            now = clock()
            done = any(_consume(rec, data, now, endpoint, state) for data in parser.close())
    rec.end_time = clock() if not done else now
    if state["usage_tokens"] is not None:  # exact even when one chunk carries several tokens
        rec.num_output_tokens = state["usage_tokens"]
    if not done:
        rec.error = "stream ended before data: [DONE] (response cut short)"
        return
    rec.success = True


async def _one_request(client, req: Request, config: BenchConfig, model: str, clock: Callable[[], float],
                       gate: asyncio.Semaphore | None) -> RequestRecord:
    rec = RequestRecord(int(req.request_id), float(req.arrival_time), int(req.prompt_len), int(req.output_len))
    # Built before the send time is taken, so a long prompt's encoding is not counted as TTFT.
    payload = json.dumps(request_body(req, config, model)).encode()
    async with gate if gate is not None else contextlib.nullcontext():
        rec.send_time = clock()
        try:
            # A total deadline: httpx's own timeouts bound each read, not the whole response.
            async with asyncio.timeout(config.timeout_s):
                await _stream_one(client, ENDPOINTS[config.endpoint], payload, rec, clock, config.endpoint)
        except TimeoutError:
            rec.error = f"timeout: no complete response within {config.timeout_s:g} s"
        except _StreamError as exc:
            rec.error = str(exc)
        except Exception as exc:  # noqa: BLE001 -- one bad request must never end the run
            rec.error = _describe(exc)
        if not rec.success:
            rec.end_time = clock()
    return rec


def _headers(config: BenchConfig) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


async def list_models(client, url: str, timeout_s: float) -> tuple[int, list[str], str]:
    """(HTTP status, model ids, error text) of GET /v1/models; BenchError if nothing answers."""
    import httpx

    try:
        resp = await client.get("/v1/models", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {url}: {_describe(exc)}") from None
    if not 200 <= resp.status_code < 300:
        return resp.status_code, [], _error_message(resp.content)
    try:
        data = resp.json().get("data") or []
        ids = [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return resp.status_code, [], "the answer is not an OpenAI model list"
    return resp.status_code, ids, ""


async def run_benchmark(requests: Sequence[Request], config: BenchConfig, *,
                        on_record: Callable[[RequestRecord], None] | None = None) -> BenchResult:
    """Replay `requests` open loop against `config.url`; one record per request, in request-id order.

    Request i leaves `arrival_time` seconds after the start whatever is outstanding, unless
    `max_concurrency` requests are in flight (then it waits for a slot; its send lag shows
    it). Failures are recorded, never raised. BenchError before anything is sent when the
    server cannot be reached, or when no model is given and the server lists none."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with the serving extras
        raise BenchError("kvsched bench needs httpx: pip install 'kvsched[bench]' (or httpx)") from None

    headers = _headers(config)
    # No pool limit: a capped pool would queue requests inside the client and close the loop.
    limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
    timeout = httpx.Timeout(config.timeout_s)
    async with httpx.AsyncClient(base_url=config.url, headers=headers, limits=limits, timeout=timeout) as client:
        # Probe first: an unreachable server should fail in a second, not after the whole trace.
        status, ids, err = await list_models(client, config.url, min(config.timeout_s, 30.0))
        model = config.model
        if model is None:
            if not ids:
                why = f"HTTP {status}: {err}" if err else "it lists no model"
                raise BenchError(f"cannot find a model to benchmark at {config.url}/v1/models ({why}); "
                                 f"name one with --model")
            model = ids[0]
        gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        start = time.perf_counter()

        def clock() -> float:
            return time.perf_counter() - start

        async def tracked(req: Request) -> RequestRecord:
            rec = await _one_request(client, req, config, model, clock, gate)
            if on_record is not None:
                on_record(rec)
            return rec

        tasks = []
        for req in sorted(requests, key=lambda r: (r.arrival_time, r.request_id)):
            # Sleep to an absolute target, so timer jitter never accumulates along the trace.
            delay = req.arrival_time - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(tracked(req)))
        records = list(await asyncio.gather(*tasks))
    records.sort(key=lambda r: r.request_id)
    return BenchResult(records, summarize_records(records, percentiles=config.percentiles), model, started_at)


# --- output -----------------------------------------------------------------------------
def save_benchmark(out_dir: str | Path, result: BenchResult, config: BenchConfig, workload: dict, *,
                   format: str = "parquet") -> Path:
    """requests.parquet (or .csv), summary.json and config.json in `out_dir` (created)."""
    from kvsched import __version__
    from kvsched.results import write_json

    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = records_frame(result.records)
    if format == "parquet":
        df.to_parquet(out / "requests.parquet", index=False, compression="zstd")
    else:
        df.to_csv(out / "requests.csv", index=False)
    write_json(out / "summary.json", result.summary)
    write_json(out / "config.json", {"kvsched_version": __version__, "started_at": result.started_at,
                                     **config.to_json(result.model), "workload": workload})
    return out


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def print_summary(result: BenchResult, config: BenchConfig, console=None) -> None:
    """Two rich tables on stdout: counts and throughput, then latency statistics in ms."""

    from rich.table import Table

    from kvsched.console import stdout_console

    s = result.summary
    head = Table(title=f"{s['num_requests']} requests to {config.url} ({result.model}, {config.endpoint})")
    head.add_column("metric")
    head.add_column("value", justify="right")
    for label, value in (
        ("completed / failed", f"{s['completed']} / {s['failed']}"),
        ("duration (s)", _fmt(s["duration_s"], 2)),
        ("request throughput (req/s)", _fmt(s["request_throughput"], 3)),
        ("output throughput (tok/s)", _fmt(s["output_throughput"])),
        ("total token throughput (tok/s)", _fmt(s["total_token_throughput"])),
        ("input / output tokens", f"{s['total_input_tokens']:,} / {s['total_output_tokens']:,}"),
        ("send lag mean / max (ms)", f"{_fmt(s['mean_send_lag_ms'])} / {_fmt(s['max_send_lag_ms'])}"),
    ):
        head.add_row(label, value)
    labels = [percentile_label(p) for p in s["percentiles"]]
    lat = Table(title="latency (ms)")
    lat.add_column("metric")
    for col in ("mean", "median", "std", *labels):
        lat.add_column(col, justify="right")
    for label, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E latency", "e2el_ms")):
        lat.add_row(label, *(_fmt(s[f"{stat}_{key}"], 2) for stat in ("mean", "median", "std", *labels)))
    # Piped output has no terminal width; do not squeeze the tables into 80 columns.
    console = console or stdout_console()
    console.print(head)
    console.print(lat)


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[RequestRecord], None] | None]:
    """A rich progress bar on stderr counting finished requests (and failures); None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("bench", total=total, failed=0)
    failed = 0

    def on_record(rec: RequestRecord) -> None:
        nonlocal failed
        failed += not rec.success
        bar.update(task, advance=1, failed=failed)

    with bar:
        yield on_record
