"""A scheduler seen through a wrapper, to observe its decisions without patching it.

Tools that time, count or record a scheduler's `schedule` calls subclass `SchedulerProxy` and
override `schedule`; every other attribute (options, `uses_pool`, hooks the loop calls) is the
inner scheduler's. A wrapper rather than a patched instance attribute, because the compiled
core's schedulers (kvsched.compiled) take no new instance attributes.
"""

from __future__ import annotations


class SchedulerProxy:
    """`inner` unchanged; subclasses override `schedule` (and call `self.inner.schedule`)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def schedule(self, view):
        return self.inner.schedule(view)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
