"""Shared helpers for tests: small workloads and a recording wrapper around real schedulers."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

import kvsched.schedulers
import kvsched.sim.cost  # noqa: F401  (registers cost models)
from kvsched.decision import Decision, Scheduler, View
from kvsched.request import Request

# CI explores the same examples on every run (no flaky failures); locally each run
# explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


class Recorder(Scheduler):
    """Passes every call through to a real scheduler and keeps its decisions."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.decisions: list[tuple[float, Decision]] = []

    def schedule(self, view: View) -> Decision:
        d = self.inner.schedule(view)
        self.decisions.append((view.now, d))
        return d


def reqs(*specs: tuple[float, int, int]) -> list[Request]:
    """Requests from (arrival_time, prompt_len, output_len) triples, ids 0..n-1."""
    return [Request(i, t, p, o) for i, (t, p, o) in enumerate(specs)]


@pytest.fixture
def make_reqs():
    return reqs


@pytest.fixture(scope="session")
def exe() -> str:
    """The installed `kvsched` console script (CLI tests run it in a subprocess)."""
    path = shutil.which("kvsched")
    if path is None:
        pytest.fail("the `kvsched` console script is not on PATH; install the package with `pip install -e .`")
    return path
