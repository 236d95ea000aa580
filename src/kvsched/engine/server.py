"""`kvsched serve`: an OpenAI-compatible HTTP server on the serving engine.

Routes: POST /v1/completions and /v1/chat/completions (JSON, or Server-Sent Events
with `"stream": true`), GET /v1/models, /health and /metrics (Prometheus text). The
/v1 routes need `Authorization: Bearer KEY` when the server has an API key.

Every error, whatever the route, has OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}`: 400 for a body that is not UTF-8 JSON (or nests too deep, or holds
a lone surrogate), a bad or unsupported parameter (types are strict: `true` is not a
number, `"yes"` not a flag), or a request that can never fit the KV capacity or the
model's context; 401 for a missing or wrong key (checked before the body is read);
404 for an unknown model or route; 405 for a wrong method; 413 for a body above
`max_body_bytes`; 500 when the engine failed on this request; 503 (with Retry-After)
when the waiting queue is at its limit, or when the engine is down. Messages speak of
the request; exceptions go to the log. A client that disconnects, mid-stream or while
waiting for a non-streamed answer, has its request aborted: the engine frees its KV
before the next step.

Tokenizing runs in a worker thread, so a long prompt does not hold up the event loop.
`run_server` (what `kvsched serve` runs) exits with status 1 when the engine thread
dies, and gives in-flight requests `GRACEFUL_SHUTDOWN_S` to finish on SIGTERM/SIGINT.

Only what the engine does is accepted: one choice (n = 1), no logprobs, echo or
penalties; `ignore_eos` (vLLM's extension) makes a request run to max_tokens, which
is how `kvsched bench` imposes a trace's output lengths.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvsched.engine.serving import (
    ENGINE_FAILED,
    SEED_MAX,
    SEED_MIN,
    STEP_TIME_BUCKETS_S,
    EngineDead,
    EngineOverloaded,
    Output,
    SamplingParams,
    ServingEngine,
)

log = logging.getLogger(__name__)

# How often a handler waiting for a non-streamed answer checks that its client is still there.
DISCONNECT_POLL_S = 0.25
# The largest request body read (`kvsched serve --max-body-bytes`); larger ones get 413.
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
# On SIGTERM/SIGINT, how long in-flight requests may still run before they are cancelled.
GRACEFUL_SHUTDOWN_S = 3.0


class _JSON(JSONResponse):
    """JSONResponse in ASCII (so no string can fail to encode) and with NaN refused."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return _JSON(body, status_code=self.status, headers=self.headers)


# --- request bodies ---------------------------------------------------------------------
# Strict: JSON true is not the number 1 and "yes" is not a flag; NaN and infinities are
# refused; unknown fields are ignored, as OpenAI-compatible servers do.
_STRICT = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Parameters both endpoints share. Unknown fields are ignored, as OpenAI-compatible
    servers do; known ones the engine cannot honour are refused by `_unsupported`."""

    model_config = _STRICT

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    def _unsupported(self) -> list[tuple[str, str]]:
        bad = []
        if self.n != 1:
            bad.append(("n", f"n={self.n}: this server returns one choice per request (n=1)"))
        if self.presence_penalty or self.frequency_penalty:
            bad.append(("presence_penalty", "presence and frequency penalties are not supported"))
        if self.logit_bias:
            bad.append(("logit_bias", "logit_bias is not supported"))
        return bad

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", param="stop")
        if len(stop) > 4:
            raise APIError(400, f"at most 4 stop strings, got {len(stop)}", param="stop")
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, stop=stop, ignore_eos=self.ignore_eos)


class CompletionBody(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def _unsupported(self) -> list[tuple[str, str]]:
        bad = super()._unsupported()
        if self.echo:
            bad.append(("echo", "echo is not supported"))
        if self.logprobs is not None:
            bad.append(("logprobs", "logprobs are not supported"))
        if self.best_of not in (None, 1):
            bad.append(("best_of", "best_of is not supported"))
        if self.suffix:
            bad.append(("suffix", "suffix is not supported"))
        return bad


class ContentPart(BaseModel):
    model_config = _STRICT
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise APIError(400, f"messages[{index}].content[{j}]: only text parts are supported, got "
                                    f"type {part.type!r}", param="messages")
            parts.append(part.text)
        return "".join(parts)


class ChatBody(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ChatBody:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; give one")
            self.max_tokens = self.max_completion_tokens
        return self

    def _unsupported(self) -> list[tuple[str, str]]:
        bad = super()._unsupported()
        if self.logprobs:
            bad.append(("logprobs", "logprobs are not supported"))
        if self.tools:
            bad.append(("tools", "tools are not supported"))
        return bad


# --- the app ----------------------------------------------------------------------------
class _Counters:
    """Requests the HTTP layer refused, by reason (for /metrics)."""

    def __init__(self) -> None:
        self.refused = {"bad_request": 0, "too_large": 0, "overloaded": 0, "unauthorized": 0}


def create_app(engine: ServingEngine, *, model_name: str, api_key: str | None = None,
               manage_engine: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app. With `manage_engine` the app starts the engine thread on startup
    and stops it on shutdown. Bodies above `max_body_bytes` get 413."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    from contextlib import asynccontextmanager

    counters = _Counters()
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine and not engine.alive:
            engine.start()
        yield
        if manage_engine:
            engine.shutdown()

    app = FastAPI(title="kvsched", lifespan=lifespan, default_response_class=_JSON)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status == 400:
            counters.refused["bad_request" if exc.code != "too_large" else "too_large"] += 1
        elif exc.status == 413:
            counters.refused["too_large"] += 1
        elif exc.status == 401:
            counters.refused["unauthorized"] += 1
        elif exc.status == 503 and exc.code == "overloaded":
            counters.refused["overloaded"] += 1
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters.refused["bad_request"] += 1
        return _validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own errors (unknown route, wrong method), in OpenAI's shape.
        if exc.status_code == 404:
            error = APIError(404, f"no route {request.method} {request.url.path}", code="not_found")
        elif exc.status_code == 405:
            error = APIError(405, f"{request.method} is not allowed on {request.url.path}",
                             code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail), type="invalid_request_error" if exc.status_code < 500
                             else "server_error")
        error.headers = dict(exc.headers or {})
        return error.response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return APIError(500, "internal server error (logged by the server)", type="server_error",
                        code="internal_error").response()

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                           type="authentication_error", code="invalid_api_key")

    auth = [Depends(check_key)]

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.alive:
            reason = ENGINE_FAILED if engine.error is not None else "the engine is stopped"
            return _JSON({"status": "error", "reason": reason}, status_code=503)
        return _JSON({"status": "ok"})

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "kvsched",
            "max_model_len": engine.max_total_len(),
        }]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus_text(engine, counters.refused),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # The bodies are read by the handlers, after `check_key`: an unauthenticated client
    # cannot make the server read (or parse) anything.
    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        body = _parse(CompletionBody, await _read_json(request, max_body_bytes))
        check_model(body.model)
        _refuse_unsupported(body)
        prompt_ids = await asyncio.to_thread(_completion_prompt, body.prompt, engine.tokenizer)
        return await _generate(engine, request, body, prompt_ids, model_name, chat=False)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request):
        body = _parse(ChatBody, await _read_json(request, max_body_bytes))
        check_model(body.model)
        _refuse_unsupported(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                    for i, m in enumerate(body.messages)]
        prompt_ids = await asyncio.to_thread(_chat_prompt, messages, engine.tokenizer)
        return await _generate(engine, request, body, prompt_ids, model_name, chat=True)

    return app


async def _read_json(request: Request, max_body_bytes: int) -> dict:
    """The request's JSON object, read up to `max_body_bytes` (413 beyond). Refused with
    400: a body that is not UTF-8, not JSON (NaN and Infinity are not), too deeply
    nested, not an object, or with a lone surrogate anywhere (it could not be encoded)."""
    too_large = APIError(413, f"the request body is larger than this server's limit of {max_body_bytes} bytes",
                         code="body_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8 (at byte {exc.start})",
                       code="json_invalid") from None
    try:
        obj = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       code="json_invalid") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply", code="json_invalid") from None
    except ValueError as exc:  # NaN/Infinity, an integer of more digits than int() takes
        raise APIError(400, f"malformed JSON body: {exc}", code="json_invalid") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(obj).__name__}",
                       code="json_invalid")
    _refuse_surrogates(obj)
    return obj


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _refuse_surrogates(obj: dict) -> None:
    """400 naming the first field (keys too) whose text has a lone UTF-16 surrogate: JSON's
    `"\\ud800"` decodes to a str that no UTF-8 encoder (the tokenizer included) accepts."""
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in obj.items()][::-1]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{path}.{k}", v) for k, v in value.items()][::-1]
            keys = [path] + [f"{path}.{k}" for k in value]
        elif isinstance(value, list):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(value)][::-1]
            keys = [path]
        else:
            keys = [path, value] if isinstance(value, str) else [path]
        for text in keys:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                field = path.split(".")[0].split("[")[0]
                where = path.encode("ascii", "backslashreplace").decode()
                raise APIError(400, f"{where}: text with a lone UTF-16 surrogate (not valid Unicode)",
                               param=field.encode("ascii", "backslashreplace").decode()) from None


def _parse(model: type[BaseModel], obj: dict):
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _validation_error(exc.errors(include_url=False, include_input=False)) from None


def _validation_error(errors: list[dict]) -> APIError:
    """A 400 naming the field (FastAPI answers 422 by default)."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "malformed JSON body", code="json_invalid")

    def where(e: dict) -> str:
        return ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"

    param = str(next((x for x in first.get("loc", ()) if x != "body"), "body"))
    messages = "; ".join(f"{where(e)}: {e.get('msg')}" for e in errors[:5])
    if param == "body":  # a model-level check
        param = "max_tokens" if "max_tokens" in messages else None
    return APIError(400, f"invalid request: {messages}", param=param)


def _refuse_unsupported(body: _SamplingFields) -> None:
    bad = body._unsupported()
    if bad:
        param, message = bad[0]
        raise APIError(400, message, param=param)


def _chat_prompt(messages: list[dict], tokenizer) -> list[int]:
    """Token ids of a conversation in the model's chat format."""
    try:
        prompt = tokenizer.apply_chat_template(messages)
    except (ValueError, TypeError):
        log.warning("the chat template refused a conversation", exc_info=True)
        raise APIError(400, "these messages cannot be written in the model's chat format",
                       param="messages") from None
    return tokenizer.encode(prompt)


def _completion_prompt(prompt, tokenizer) -> list[int]:
    """Token ids of a completions prompt: text, or token ids; a batch of one is unwrapped."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, f"one prompt per request, got a batch of {len(prompt)}", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        vocab = tokenizer.vocab_size
        for i, t in enumerate(prompt):
            if not 0 <= t < vocab:
                raise APIError(400, f"prompt[{i}] = {t} is not a token id (vocabulary size {vocab})", param="prompt")
        ids = list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    return ids


async def _generate(engine: ServingEngine, request: Request, body: _SamplingFields, prompt_ids: list[int],
                    model_name: str, *, chat: bool):
    max_tokens = body.max_tokens
    if max_tokens is None:  # as much as fits, like vLLM
        max_tokens = engine.max_total_len() - len(prompt_ids)
        if max_tokens < 1:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens: no room for output within "
                                f"{engine.max_total_len()} tokens (KV capacity and model context)",
                           param="messages" if chat else "prompt", code="too_large")
    params = body.sampling(max_tokens)
    aio = asyncio.get_running_loop()
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    try:
        rid = engine.submit(prompt_ids, params, lambda out: aio.call_soon_threadsafe(outputs.put_nowait, out))
    except EngineOverloaded as exc:
        raise APIError(503, str(exc), type="server_error", code="overloaded", headers={"Retry-After": "1"}) from None
    except EngineDead as exc:
        raise APIError(503, str(exc), type="server_error", code="engine_dead") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param="max_tokens", code="too_large") from None
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model_name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(engine, rid, outputs, meta, chat, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await _collect(engine, request, rid, outputs, meta, chat)


async def _collect(engine, request: Request, rid: int, outputs: asyncio.Queue, meta: dict, chat: bool) -> dict:
    async def watch() -> None:  # uvicorn does not cancel a handler whose client left
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        engine.abort(rid)

    watcher = asyncio.create_task(watch())
    parts: list[str] = []
    try:
        while True:
            out = await outputs.get()
            parts.append(out.text)
            if out.error is not None:
                raise APIError(500, out.error, type="server_error", code="internal_error")
            if out.finished:
                break
    except asyncio.CancelledError:
        engine.abort(rid)
        raise
    finally:
        watcher.cancel()
    text = "".join(parts)
    usage = _usage(out)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": out.finish_reason, "logprobs": None}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": out.finish_reason, "logprobs": None}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}


async def _sse(engine, rid: int, outputs: asyncio.Queue, meta: dict, chat: bool,
               include_usage: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    done = False

    def chunk(text: str | None, finish_reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return _event({**meta, "object": obj, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            out = await outputs.get()
            if out.error is not None:
                yield _event({"error": {"message": out.error, "type": "server_error", "param": None,
                                        "code": "internal_error"}})
                break
            if out.text or out.finished:
                yield chunk(out.text, out.finish_reason)
            if out.finished:
                if include_usage:
                    yield _event({**meta, "object": obj, "choices": [], "usage": _usage(out)})
                break
        done = True
        yield "data: [DONE]\n\n"
    finally:
        if not done:  # the client went away (the response task was cancelled)
            engine.abort(rid)


def _event(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=True)}\n\n"


def _usage(out: Output) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens}


def prometheus_text(engine: ServingEngine, refused: dict[str, int]) -> str:
    """The engine's gauges and counters in Prometheus' text exposition format."""
    s = engine.stats
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples) -> None:
        lines.append(f"# HELP kvsched_{name} {help_text}")
        lines.append(f"# TYPE kvsched_{name} {kind}")
        for labels, value in samples:
            lines.append(f"kvsched_{name}{labels} {value}")

    metric("num_requests_waiting", "gauge", "Requests holding no KV (new or preempted).", [("", s.num_waiting)])
    metric("num_requests_running", "gauge", "Requests holding KV.", [("", s.num_running)])
    metric("kv_cache_used_tokens", "gauge", "KV slots in use (whole blocks).", [("", s.kv_used_tokens)])
    metric("kv_cache_capacity_tokens", "gauge", "KV capacity in tokens.", [("", s.kv_capacity_tokens)])
    usage = s.kv_used_tokens / s.kv_capacity_tokens if s.kv_capacity_tokens else 0.0
    metric("kv_cache_usage_ratio", "gauge", "KV slots in use / capacity.", [("", f"{usage:.6f}")])
    metric("requests_received_total", "counter", "Requests the engine accepted.", [("", s.num_requests_total)])
    metric("requests_finished_total", "counter", "Finished requests by finish reason.",
           [(f'{{finish_reason="{k}"}}', v) for k, v in sorted(s.num_finished.items())])
    metric("requests_aborted_total", "counter", "Requests aborted because their client disconnected.",
           [("", s.num_aborted)])
    metric("requests_refused_total", "counter", "Requests refused before reaching the engine, by reason.",
           [(f'{{reason="{k}"}}', v) for k, v in sorted(refused.items())])
    metric("num_preemptions_total", "counter", "Evictions (recompute preemptions and restarts) of ended requests.",
           [("", s.num_preemptions)])
    metric("prompt_tokens_total", "counter", "Prompt tokens received.", [("", s.num_prompt_tokens)])
    metric("generation_tokens_total", "counter", "Output tokens generated (replays after restarts excluded).",
           [("", s.num_generation_tokens)])
    buckets = [(f'{{le="{b}"}}', n) for b, n in zip(STEP_TIME_BUCKETS_S, s.step_time_buckets, strict=True)]
    buckets.append(('{le="+Inf"}', s.num_steps))
    lines.append("# HELP kvsched_step_time_seconds Wall time of one engine step (a batched forward pass).")
    lines.append("# TYPE kvsched_step_time_seconds histogram")
    lines += [f"kvsched_step_time_seconds_bucket{labels} {v}" for labels, v in buckets]
    lines.append(f"kvsched_step_time_seconds_sum {s.step_time_sum_s:.6f}")
    lines.append(f"kvsched_step_time_seconds_count {s.num_steps}")
    return "\n".join(lines) + "\n"


def run_server(app: FastAPI, engine: ServingEngine, *, host: str = "127.0.0.1", port: int = 8000,
               sockets=None, log_level: str = "info", graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S,
               on_ready: Callable[[int], None] | None = None) -> int:
    """Serve `app` with uvicorn until SIGINT/SIGTERM or the engine thread's death; the
    exit status: 0, or 1 when the engine died (or the server could not start). On a
    signal, requests in flight get `graceful_shutdown_s` seconds before they are
    cancelled, so the process always stops. `on_ready(port)` is called once the socket is
    bound (with the real port, also for port 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready and self.started and self.servers and self.servers[0].sockets:
                on_ready(self.servers[0].sockets[0].getsockname()[1])

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_shutdown_s)
    server = Server(config)

    def on_death() -> None:
        log.error("the engine thread died; the server exits")
        server.should_exit = True  # uvicorn's main loop polls it

    engine.on_death = on_death
    server.run(sockets=sockets)
    if engine.error is not None or not server.started:
        return 1
    return 0


__all__ = ["DEFAULT_MAX_BODY_BYTES", "APIError", "create_app", "prometheus_text", "run_server"]
