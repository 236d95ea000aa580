"""Scheduler implementations, one or more per module, each registered by its decorator.

To add a scheduler: write a class deriving from `kvsched.decision.Scheduler` in a
module here and decorate it with `@SCHEDULERS.register("name", "one line")`. That is
all: this file imports none of its modules. `SCHEDULERS` (`kvsched.registry`) imports
them when a name is asked for (the module named like the scheduler, else all of them,
sorted) or listed, so a run imports only the scheduler it runs (docs/architecture.md,
"Start-up and lazy imports").
"""

from kvsched.registry import SCHEDULERS

__all__ = ["SCHEDULERS"]


def __getattr__(name: str):
    # PEP 562: `kvsched.schedulers.vllm` after a bare `import kvsched.schedulers` still
    # works, as when this file imported every module.
    if f"{__name__}.{name}" in SCHEDULERS.home_modules():
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
