"""Waiting queues for schedulers: FIFO with head insertion, and a priority heap.

Both are O(1) or O(log n) per operation so the step cost does not grow with the
length of the waiting queue (no list.pop(0), no re-sorting every step).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

from kvsched.request import Request


class FCFSQueue:
    """Arrival order; preempted requests go back to the head (vLLM's prepend)."""

    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def add(self, r: Request) -> None:
        self._q.append(r)

    def add_front(self, r: Request) -> None:
        self._q.appendleft(r)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove(self, request_ids: set[int]) -> None:
        """Drop the requests with these ids (withdrawn by their clients), O(length)."""
        self._q = deque(r for r in self._q if r.request_id not in request_ids)

    def __len__(self) -> int:
        return len(self._q)


class PriorityQueue:
    """Smallest key first; the key is taken when a request is (re)inserted."""

    def __init__(self, key: Callable[[Request], tuple]) -> None:
        self._key = key
        self._heap: list[tuple] = []

    def add(self, r: Request) -> None:
        heapq.heappush(self._heap, (*self._key(r), r.request_id, r))

    add_front = add  # priority, not position, decides where a preempted request goes

    def peek(self) -> Request:
        return self._heap[0][-1]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[-1]

    def remove(self, request_ids: set[int]) -> None:
        """Drop the requests with these ids (withdrawn by their clients), O(length)."""
        self._heap = [e for e in self._heap if e[-1].request_id not in request_ids]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
