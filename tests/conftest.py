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


def create_scheduler(name: str, workload: list[Request], **opts) -> Scheduler:
    """A registered scheduler for a small random workload. The WAIT family needs a
    workload description: take it from the requests (a few length bins) with explicit
    small thresholds, since these capacities are far below what the automatic designs
    accept."""
    from kvsched.bounds.fluid import types_from_requests
    from kvsched.registry import SCHEDULERS
    from kvsched.schedulers.wait_common import WaitFamily, format_types

    factory = SCHEDULERS.get(name).factory
    if isinstance(factory, type) and issubclass(factory, WaitFamily):
        kinds = types_from_requests(workload, rate=1.0, max_distinct=3, num_bins=3)
        opts = {"types": format_types(kinds), **opts}
        if name == "wait-cp":
            opts.setdefault("tl", 2 + len(kinds))
        else:
            opts.setdefault("thresholds", ",".join(str(1 + k % 2) for k in range(len(kinds))))
    return SCHEDULERS.create(name, **opts)


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


@pytest.fixture
def live_server():
    """start(app) serves a real ASGI app with uvicorn on a free loopback port, in a thread,
    and returns its base URL; every server started is stopped when the test ends."""
    import socket
    import threading
    import time

    import uvicorn

    running = []

    def start(app) -> str:
        # IPPROTO_TCP explicitly: asyncio only turns Nagle off (TCP_NODELAY) on sockets that
        # say so, and Nagle would hold each streamed token back ~40 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        host, port = sock.getsockname()
        return f"http://{host}:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(30)
