"""Scheduler implementations; importing this package registers them all.

To add a scheduler: write a class deriving from `kvsched.decision.Scheduler` in a
module here, decorate it with `@SCHEDULERS.register("name", "one line")`, and import
the module below.
"""

from kvsched.registry import SCHEDULERS
from kvsched.schedulers import (  # noqa: F401  (registration)
    geometric,
    mcsf,
    nested_wait,
    protection,
    sorted_f,
    vidur,
    vllm,
    wait,
    wait_cp,
)

__all__ = ["SCHEDULERS"]
