"""The serving engine: kvsched's online loop on the real model, for the HTTP server.

One engine thread owns the `OnlineLoop`, the KV cache and the model. HTTP handlers
(another thread, asyncio) only `submit` requests and `abort` them through a command
queue; the engine thread drains it between steps, steps while there is work, and hands
every request's new text to that request's `sink` as `Output` events. So the loop keeps
its single-owner model of the design page: schedulers decide, the loop applies, and no
request state is touched from two threads.

The clock is wall time since the engine started: a request arrives when the engine
thread takes it from the queue, and every step starts no earlier than the wall clock,
so scheduling overhead and idle gaps show in the loop's timestamps.

What a server adds to `EngineBackend` (`ServingBackend`):
- sampling per request (greedy at temperature 0, or below MIN_SAMPLING_TEMPERATURE,
  else temperature and top-p in float64 with the request's own seeded generator);
- stopping at EOS (unless `ignore_eos`) or at a stop string: the backend lists the
  request in `stopped` and the loop ends it after that token;
- incremental detokenization, holding back text that could still become a stop string
  or is an incomplete UTF-8 character;
- replay after a restart: a killed request recomputes its discarded tokens, but the
  tokens already streamed to the client are fed back instead of sampled again, so what
  the client received stays the output.

A request that fails inside the engine (its sampling, its detokenization, its sink)
fails alone: it ends with an error event, its KV is freed and the engine goes on. If
the engine thread dies anyway (a step or a scheduler fails), every request in it or
still queued gets an error event, `submit` refuses new ones, and `on_death` is called
(the server then exits). Error events say what happened in the client's terms; the
exception goes to the log.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kvsched.decision import Scheduler
from kvsched.engine.backend import EngineBackend
from kvsched.kvcache import KVCache
from kvsched.loop import OnlineLoop
from kvsched.request import Request, RequestStatus

log = logging.getLogger(__name__)

# Step-time histogram buckets of /metrics, in seconds.
STEP_TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The seeds torch.Generator.manual_seed accepts (int64 and uint64 together).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# Below this temperature sampling is greedy: logits / temperature would overflow, and the
# distribution is the argmax's to within float precision anyway.
MIN_SAMPLING_TEMPERATURE = 1e-5

# What a client is told when its request failed inside the engine (details go to the log).
REQUEST_FAILED = "the server failed while generating this request (an internal error, logged by the server)"
ENGINE_FAILED = "the engine stopped after an internal error (logged by the server)"
SHUTTING_DOWN = "the server is shutting down"


@dataclass(frozen=True)
class SamplingParams:
    """How one request's tokens are chosen and when it ends (OpenAI's parameters)."""

    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # run to max_tokens whatever the model emits (benchmarks)

    def __post_init__(self) -> None:
        # Comparisons are False for NaN, so NaN fails each range check.
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= 2.0):
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not SEED_MIN <= self.seed <= SEED_MAX):
            raise ValueError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")


@dataclass
class Output:
    """An event for one request: text generated since the previous event, and at the
    end its finish reason ("stop", "length", "abort") or an error message."""

    request_id: int
    text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


class EngineOverloaded(RuntimeError):
    """The waiting queue is at its limit: retry later (HTTP 503)."""


class EngineDead(RuntimeError):
    """The engine thread stopped (shut down, or a step failed)."""


@dataclass
class _Stream:
    """What the backend keeps per request: its sampling, its output, its text."""

    params: SamplingParams
    generator: object  # torch.Generator, or None when greedy
    output_ids: list[int] = field(default_factory=list)  # every token sampled, kept across restarts
    text: str = ""  # decoded output, cut at a stop string
    num_sent_chars: int = 0
    finish_reason: str | None = None


class ServingBackend(EngineBackend):
    """EngineBackend with per-request sampling, stop conditions and detokenization.

    A request whose sampling or detokenization raises is listed in `failed` (and in
    `stopped`, so the loop ends it after this step); the other rows of the step go on."""

    def __init__(self, model, kv: KVCache, tokenizer, *, device: str = "cpu", seed: int = 0) -> None:
        super().__init__(model, kv, seed=seed, device=device)
        self.tokenizer = tokenizer
        eos = {tokenizer.eos_token_id, tokenizer.token_to_id("<|im_end|>")}
        self.stop_token_ids = frozenset(t for t in eos if t is not None)
        self.streams: dict[int, _Stream] = {}
        self.stopped: set[int] = set()  # read and cleared by OnlineLoop after each step
        self.emitted: list[int] = []  # requests with a new (not replayed) token this step
        self.failed: set[int] = set()  # requests that raised in this backend (ended as errors)

    def open(self, request_id: int, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        torch = self._torch
        generator = None
        if params.temperature >= MIN_SAMPLING_TEMPERATURE:
            seed = params.seed
            if seed is None:  # reproducible per (server seed, request id), like the synthetic prompts
                seed = int(np.random.default_rng([self.seed, request_id]).integers(2**63))
            generator = torch.Generator(device=self.device).manual_seed(seed)
        self._prompts[request_id] = list(prompt_ids)
        self.streams[request_id] = _Stream(params, generator)

    def prompt_ids_of(self, request_id: int) -> list[int]:
        return self._prompts[request_id]

    def close(self, request_id: int) -> None:
        self.failed.discard(request_id)
        self.streams.pop(request_id, None)
        self._prompts.pop(request_id, None)
        self._generated.pop(request_id, None)

    def _token_ids(self, r: Request) -> list[int]:
        # Keep the discarded output of a restart: it is replayed, not sampled again.
        return self._prompts[r.request_id] + self.streams[r.request_id].output_ids[:r.num_output_tokens]

    def _choose(self, batch, emits, logits) -> list[int]:
        torch = self._torch
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, ((r, _), emit) in enumerate(zip(batch, emits, strict=True)):
            st = self.streams[r.request_id]
            if not emit or st.generator is None or len(st.output_ids) > r.num_output_tokens:
                continue
            try:
                greedy[i] = _sample(torch, logits[i], st.params, st.generator)
            except Exception:  # noqa: BLE001 -- whatever one request's sampling raises ends it alone
                self._fail(r.request_id, "sampling")
        return greedy

    def _fail(self, request_id: int, stage: str) -> None:
        log.exception("request %d failed in %s; it is ended, the engine goes on", request_id, stage)
        self.failed.add(request_id)
        self.stopped.add(request_id)

    def _emit(self, r: Request, token: int) -> None:
        if r.request_id in self.failed:
            return
        try:
            self._emit_token(r, token)
        except Exception:  # noqa: BLE001 -- whatever one request's text raises ends it alone
            self._fail(r.request_id, "detokenization")

    def _emit_token(self, r: Request, token: int) -> None:
        st = self.streams[r.request_id]
        if len(st.output_ids) > r.num_output_tokens:
            return  # replaying what a restart discarded: the client has it already
        st.output_ids.append(token)
        self.emitted.append(r.request_id)
        params = st.params
        if not params.ignore_eos and token in self.stop_token_ids:
            st.finish_reason = "stop"
            self.stopped.add(r.request_id)
            return
        text = self.tokenizer.decode(st.output_ids, skip_special_tokens=True)
        if params.stop:
            # Only the new tail can complete a stop string.
            start = max(0, len(st.text) - max(map(len, params.stop)))
            hits = [i for i in (text.find(s, start) for s in params.stop) if i >= 0]
            if hits:
                text = text[:min(hits)]
                st.finish_reason = "stop"
                self.stopped.add(r.request_id)
        st.text = text

    def take_text(self, request_id: int, final: bool) -> str:
        """Text not yet sent. Until the end, hold back an incomplete UTF-8 character and
        any tail that could still grow into a stop string."""
        st = self.streams[request_id]
        end = len(st.text)
        if not final:
            while end > st.num_sent_chars and st.text[end - 1] == "\ufffd":
                end -= 1
            if st.params.stop:
                end = max(st.num_sent_chars, end - (max(map(len, st.params.stop)) - 1))
        delta = st.text[st.num_sent_chars:end]
        st.num_sent_chars = max(st.num_sent_chars, end)
        return delta


def _sample(torch, logits, params: SamplingParams, generator) -> int:
    """One token drawn at the request's temperature and top-p. In float64 with the
    softmax's max subtracted, finite logits over a temperature >= MIN_SAMPLING_TEMPERATURE
    cannot overflow; below it the draw is the argmax."""
    if params.temperature < MIN_SAMPLING_TEMPERATURE:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / params.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise FloatingPointError(f"non-finite probabilities at temperature {params.temperature!r}")
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class EngineStats:
    """Counters and gauges for /metrics (written by the engine thread only)."""

    num_waiting: int = 0
    num_running: int = 0
    kv_used_tokens: int = 0
    kv_capacity_tokens: int = 0
    num_requests_total: int = 0
    num_finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "error": 0})
    num_aborted: int = 0
    num_rejected: int = 0  # by the loop (too large); the server counts its own 400s and 503s
    num_preemptions: int = 0  # recompute preemptions and restarts
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_steps: int = 0
    step_time_sum_s: float = 0.0
    step_time_buckets: list[int] = field(default_factory=lambda: [0] * len(STEP_TIME_BUCKETS_S))


class ServingEngine:
    """The engine thread and its command queue. `submit`/`abort` are thread-safe.

    `on_death`, if set, is called (on the engine thread) when the thread dies of an
    error; `error` then holds the exception."""

    def __init__(self, model, tokenizer, scheduler: Scheduler, *, capacity_tokens: int, block_size: int = 16,
                 device: str = "cpu", seed: int = 0, max_waiting: int = 256) -> None:
        self.model, self.tokenizer, self.scheduler = model, tokenizer, scheduler
        self.kv = KVCache(capacity_tokens, block_size, track_block_ids=True)
        self.backend = ServingBackend(model, self.kv, tokenizer, device=device, seed=seed)
        self.loop = OnlineLoop(scheduler, self.backend, self.kv)
        self.max_waiting = max_waiting
        self.max_model_len = model.config.max_position_embeddings
        self.stats = EngineStats(kv_capacity_tokens=self.kv.num_blocks * self.kv.block_size)
        self._commands: queue.Queue = queue.Queue()
        self._sinks: dict[int, Callable[[Output], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Held while submitting and while the dying thread closes the queue, so every
        # request that `submit` accepts is either run or answered with an error.
        self._submit_lock = threading.Lock()
        self._closed = False
        self.error: BaseException | None = None  # why the engine thread died, if it did
        self.on_death: Callable[[], None] | None = None
        self._t0 = time.monotonic()

    @property
    def capacity_tokens(self) -> int:
        return self.kv.num_blocks * self.kv.block_size

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def max_total_len(self) -> int:
        """The most prompt + output tokens one request may have: it must fit in the KV
        capacity at its last step and in the model's context."""
        return min(self.capacity_tokens + 1, self.max_model_len)

    # --- called from other threads -----------------------------------------------------
    def start(self) -> ServingEngine:
        self._thread = threading.Thread(target=self._run, name="kvsched-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def check_size(self, num_prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a request of this size can never run, or None when it can."""
        total = num_prompt_tokens + max_tokens
        if total > self.max_model_len:
            return (f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} exceeds the "
                    f"model's context of {self.max_model_len} tokens")
        if total - 1 > self.capacity_tokens:
            return (f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) needs {total - 1} KV tokens "
                    f"at its last step but the server's KV capacity is {self.capacity_tokens} tokens")
        return None

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Output], None]) -> int:
        """Queue a request; its events go to `sink`, called on the engine thread (it must
        not block). Raises EngineOverloaded when the waiting queue is full, EngineDead
        when the engine is not running, ValueError when the request can never run."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        reason = self.check_size(len(prompt_ids), params.max_tokens)
        if reason is not None:
            raise ValueError(reason)
        with self._submit_lock:
            if not self.alive:
                raise EngineDead(ENGINE_FAILED if self.error is not None else "the engine is stopped")
            num_waiting = self.stats.num_waiting + self._commands.qsize()
            if num_waiting >= self.max_waiting:
                raise EngineOverloaded(f"{num_waiting} requests are waiting (limit {self.max_waiting}); retry later")
            rid = next(self._ids)
            self._commands.put(("add", rid, list(prompt_ids), params, sink))
        return rid

    def abort(self, request_id: int) -> None:
        """Withdraw a request (its client went away); its KV is freed before the next step."""
        self._commands.put(("abort", request_id))

    # --- the engine thread -----------------------------------------------------------
    def _clock(self) -> float:
        return time.monotonic() - self._t0

    def _run(self) -> None:
        loop = self.loop
        try:
            while not self._stopping:
                if loop.has_work and loop.idle_until is None:
                    timeout = 0.0  # busy: take what is queued, then step
                elif loop.has_work and math.isfinite(loop.idle_until):
                    timeout = max(0.0, loop.idle_until - self._clock())
                else:
                    timeout = None  # nothing to do until a command comes
                self._drain(timeout)
                loop.now = max(loop.now, self._clock())
                loop.step()
                self._publish()
        except BaseException as exc:  # a failed step must not leave clients hanging
            log.exception("the engine thread failed")
            self.error = exc
        finally:
            self._close(ENGINE_FAILED if self.error is not None else SHUTTING_DOWN)
        if self.error is not None and self.on_death is not None:
            self.on_death()

    def _close(self, message: str) -> None:
        """Refuse new requests and answer every one still here, running or queued."""
        with self._submit_lock:
            self._closed = True
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command[0] == "add":
                _, rid, prompt_ids, _params, sink = command
                self._send(rid, sink, Output(rid, "", len(prompt_ids), 0, error=message))
        for rid, sink in list(self._sinks.items()):
            self._send(rid, sink, Output(rid, "", 0, 0, error=message))
        self._sinks.clear()

    @staticmethod
    def _send(rid: int, sink: Callable[[Output], None], out: Output) -> bool:
        """Hand `out` to its sink; False (and logged) if the sink raised."""
        try:
            sink(out)
        except Exception:
            log.exception("request %d: its output could not be delivered; it is ended", rid)
            return False
        return True

    def _drain(self, timeout: float | None) -> None:
        """Apply queued commands; wait up to `timeout` seconds (None: forever) for the first."""
        try:
            command = self._commands.get(timeout=timeout) if timeout != 0.0 else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, rid, prompt_ids, params, sink = command
            try:
                self.backend.open(rid, prompt_ids, params)
            except Exception:  # e.g. a seed the generator cannot take: this request alone fails
                log.exception("request %d could not be opened; it is refused, the engine goes on", rid)
                self.backend.close(rid)
                self.stats.num_finished["error"] += 1
                self._send(rid, sink, Output(rid, "", len(prompt_ids), 0, error=REQUEST_FAILED))
                return
            self.loop.now = max(self.loop.now, self._clock())
            # max_tokens is all a server knows of the length: schedulers that want a
            # prediction get it as the point value and as the interval's upper end.
            r = Request(rid, self.loop.now, len(prompt_ids), params.max_tokens,
                        predicted_output_len=params.max_tokens, predicted_output_interval=(1, params.max_tokens))
            self.loop.add(r)
            self.stats.num_requests_total += 1
            self.stats.num_prompt_tokens += len(prompt_ids)
            if r.status is RequestStatus.REJECTED:  # submit() checks sizes, so only a race gets here
                self.stats.num_rejected += 1
                self.backend.close(rid)
                self._send(rid, sink, Output(rid, "", r.prompt_len, 0, error=r.reject_reason))
                return
            self._sinks[rid] = sink
        elif kind == "abort":
            self._abort(command[1], notify=True)

    def _abort(self, rid: int, *, notify: bool) -> None:
        r = self.loop.abort(rid)
        sink = self._sinks.pop(rid, None)
        if r is not None:
            self.stats.num_aborted += 1
            self._count_evictions(r)
            if sink is not None and notify:
                self._send(rid, sink, Output(rid, "", r.prompt_len, r.num_output_tokens, finish_reason="abort"))
        self.backend.close(rid)

    def _publish(self) -> None:
        """Send each request's new text; close the streams of finished ones. A request
        whose sink raises (its handler is gone) is aborted: it frees its KV."""
        backend, stats, loop = self.backend, self.stats, self.loop
        self._update_gauges()  # before any client hears of its end, so /metrics agrees
        # loop.finished lasts until the next scheduling call: a request is published once,
        # while it still has a sink.
        sinks = self._sinks
        finished = {r.request_id: r for r in loop.finished
                    if r.status is RequestStatus.FINISHED and r.request_id in sinks}
        undeliverable = []
        for rid in backend.emitted:
            if rid in finished or rid not in sinks:
                continue
            text = backend.take_text(rid, final=False)
            if text:
                num_output = len(backend.streams[rid].output_ids)
                if not self._send(rid, sinks[rid], Output(rid, text, len(backend.prompt_ids_of(rid)), num_output)):
                    undeliverable.append(rid)
        stats.num_generation_tokens += len(backend.emitted)
        backend.emitted.clear()
        for rid in undeliverable:
            self._abort(rid, notify=False)
        for rid, r in finished.items():
            self._count_evictions(r)
            sink = sinks.pop(rid)
            if rid in backend.failed:
                stats.num_finished["error"] += 1
                out = Output(rid, "", r.prompt_len, r.num_output_tokens, error=REQUEST_FAILED)
            else:
                reason = backend.streams[rid].finish_reason or "length"
                stats.num_finished[reason] += 1
                out = Output(rid, backend.take_text(rid, final=True), r.prompt_len, r.num_output_tokens,
                             finish_reason=reason)
            self._send(rid, sink, out)
            backend.close(rid)
        steps = loop.pop_steps()
        for duration in steps["duration"]:
            stats.num_steps += 1
            stats.step_time_sum_s += duration
            for i, bound in enumerate(STEP_TIME_BUCKETS_S):
                if duration <= bound:
                    stats.step_time_buckets[i] += 1
        self._update_gauges()

    def _update_gauges(self) -> None:
        stats, loop = self.stats, self.loop
        stats.num_waiting, stats.num_running = len(loop.waiting), len(loop.resident)
        stats.kv_used_tokens = self.kv.num_used_tokens

    def _count_evictions(self, r: Request) -> None:
        self.stats.num_preemptions += r.num_preemptions + r.num_restarts


__all__ = ["ENGINE_FAILED", "MIN_SAMPLING_TEMPERATURE", "REQUEST_FAILED", "SEED_MAX", "SEED_MIN", "EngineDead",
           "EngineOverloaded", "Output", "SamplingParams", "ServingBackend", "ServingEngine"]
