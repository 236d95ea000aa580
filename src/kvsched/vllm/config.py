"""Which kvsched policy the vLLM plugin runs, read from the environment (no vLLM import).

vLLM builds its scheduler in a spawned engine-core process, so the policy travels as
environment variables, which that process inherits:

- `KVSCHED_SCHEDULER`: a registered kvsched scheduler name (default `vllm`).
- `KVSCHED_OPTIONS`: a JSON object of its options, the same names and values as
  `kvsched simulate -o`, checked with the registry's `check_options`.
- `KVSCHED_STEP_LOG` (optional): a file the plugin appends one JSON line per step to.
- `KVSCHED_STRICT` (optional, "1"): raise when vLLM's scheduled set differs from the
  kvsched decision instead of logging it (the harness and tests run strict).

`plugin_env(scheduler, options, step_log)` builds these; `PolicyConfig.from_env()`
reads and validates them; `PolicyConfig.build(knobs)` creates the kvsched scheduler,
filling the options that mirror vLLM's own knobs (token budget, max_num_seqs, chunked
prefill, long-prefill threshold, full-sequence admission) from vLLM's configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_SCHEDULER = "KVSCHED_SCHEDULER"
ENV_OPTIONS = "KVSCHED_OPTIONS"
ENV_STEP_LOG = "KVSCHED_STEP_LOG"
ENV_STRICT = "KVSCHED_STRICT"

# Policies that run inside vLLM. Each maps to nothing (runs as is).
SUPPORTED = (
    "vllm", "sjf", "srpt", "fcfs-static",
    "mcsf", "mc-benchmark", "zhou-jiang", "svf", "a-max", "a-min",
    "alpha-protection", "beta-clearing",
)

# Policies refused at start-up, with the reason (docs/vllm.md, Policies).
REFUSED = {
    "wait": "WAIT pauses resident requests (they keep their KV without running); vLLM's running "
            "requests cannot be paused across steps by a scheduler without preempting them",
    "wait-cp": "WAIT-CP pauses resident requests and runs its own chunk pipeline; vLLM cannot keep a "
               "paused request's KV across steps under a scheduler's control",
    "nested-wait": "nested WAIT pauses resident requests (they keep KV without running), which vLLM's "
                   "scheduler cannot express",
    "gsa": "GSA discards generated tokens (kill-and-restart); vLLM has already streamed them to the client",
    "gsa-batched": "GSA discards generated tokens (kill-and-restart); vLLM has already streamed them",
    "gba": "GBA discards generated tokens (kill-and-restart); vLLM has already streamed them",
    "gba-batched": "GBA discards generated tokens (kill-and-restart); vLLM has already streamed them",
    "gba-sync": "GBA discards generated tokens (kill-and-restart); vLLM has already streamed them",
    "b-scaling": "b-scaling discards generated tokens (kill-and-restart); vLLM has already streamed them",
    "sarathi": "Sarathi is a Vidur replica-scheduler model with its own chunking and batch caps; vLLM's "
               "own chunked prefill is the real counterpart (run `vllm` with enable_chunked_prefill)",
    "vidur-vllm": "vidur-vllm models vLLM v0 inside Vidur; inside vLLM use `vllm` (the identity policy)",
    "sorted-f": "Sorted-F is a clairvoyant offline batch plan (all requests known at time 0, true lengths)",
}

# kvsched option -> vLLM knob it mirrors (filled from vLLM's SchedulerConfig unless given).
MIRRORED = ("max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill",
            "long_prefill_token_threshold", "policy", "reserve_full_sequence",
            "threshold_needs_two")


class PluginConfigError(ValueError):
    """A policy the plugin cannot run, or bad options: one line naming the problem."""


@dataclass(frozen=True)
class PolicyConfig:
    scheduler: str = "vllm"
    options: Mapping[str, Any] = field(default_factory=dict)
    step_log: str | None = None
    strict: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PolicyConfig:
        env = os.environ if env is None else env
        name = env.get(ENV_SCHEDULER, "").strip() or "vllm"
        text = env.get(ENV_OPTIONS, "").strip()
        options: Any = {}
        if text:
            try:
                options = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PluginConfigError(f"{ENV_OPTIONS} is not valid JSON ({exc.msg} at char {exc.pos}): {text!r}") \
                    from None
            if not isinstance(options, dict):
                raise PluginConfigError(f"{ENV_OPTIONS} must be a JSON object of options, got {text!r}")
        strict = env.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")
        config = cls(name, options, env.get(ENV_STEP_LOG) or None, strict)
        config.check()
        return config

    def check(self) -> dict[str, Any]:
        """The options, validated and coerced; raises PluginConfigError (one line)."""
        from kvsched.registry import SCHEDULERS, OptionError

        name = self.scheduler
        if name in REFUSED:
            raise PluginConfigError(f"kvsched scheduler {name!r} cannot run inside vLLM: {REFUSED[name]}")
        try:
            SCHEDULERS.get(name)
        except KeyError as exc:
            raise PluginConfigError(f"{ENV_SCHEDULER}: {exc.args[0]}") from None
        if name not in SUPPORTED:
            raise PluginConfigError(f"kvsched scheduler {name!r} is not supported inside vLLM "
                                    f"(supported: {', '.join(SUPPORTED)})")
        try:
            options = SCHEDULERS.check_options(name, dict(self.options))
        except OptionError as exc:
            raise PluginConfigError(f"{ENV_OPTIONS}: {exc}") from None
        if options.get("preemption") == "restart":
            raise PluginConfigError(
                f"{ENV_OPTIONS}: option preemption='restart' cannot run inside vLLM (it discards generated tokens, "
                "which vLLM has already streamed); use preemption='recompute'")
        return options

    def build(self, knobs: Mapping[str, Any]):
        """The kvsched scheduler, with the options that mirror vLLM's knobs filled from
        `knobs` (vLLM's values) unless the user gave them."""
        from kvsched.registry import SCHEDULERS

        options = self.check()
        known = {o.name for o in SCHEDULERS.options(self.scheduler) or ()}
        for key in MIRRORED:
            if key in knobs and key in known and key not in options:
                options[key] = knobs[key]
        if "preemption" in known and "preemption" not in options:
            options["preemption"] = "recompute"  # vLLM keeps generated tokens
        budget = knobs.get("max_num_batched_tokens")
        if budget and options.get("max_num_batched_tokens", 0) > budget:
            raise PluginConfigError(f"{ENV_OPTIONS}: option max_num_batched_tokens={options['max_num_batched_tokens']} "
                                    f"exceeds vLLM's max_num_batched_tokens={budget}")
        seqs = knobs.get("max_num_seqs")
        if seqs and options.get("max_num_seqs", 0) > seqs:
            raise PluginConfigError(f"{ENV_OPTIONS}: option max_num_seqs={options['max_num_seqs']} exceeds vLLM's "
                                    f"max_num_seqs={seqs}")
        try:
            return SCHEDULERS.create(self.scheduler, **options)
        except (ValueError, TypeError) as exc:
            raise PluginConfigError(f"kvsched scheduler {self.scheduler!r}: {exc}") from None


def plugin_env(scheduler: str = "vllm", options: Mapping[str, Any] | None = None,
               step_log: str | None = None) -> dict[str, str]:
    """The environment variables that select `scheduler` with `options` in the plugin
    (validated here, so a mistake fails in the caller's process, not in vLLM's)."""
    config = PolicyConfig(scheduler, dict(options or {}), step_log)
    config.check()
    env = {ENV_SCHEDULER: scheduler, ENV_OPTIONS: json.dumps(dict(options or {}), sort_keys=True)}
    if step_log:
        env[ENV_STEP_LOG] = str(step_log)
    return env
