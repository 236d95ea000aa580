"""The aggregate decode pool: decoding requests advanced as a group, O(events) per step.

A resident request whose next step is a plain one-token decode joins the pool when the
scheduler opts in (`Scheduler.uses_pool`). A member's progress is not written to its
`Request` every step: the pool keeps a shared step counter `T`, and a member that joined
at `T0` with `c0` computed tokens holds `c0 + (T - T0)` computed tokens and as many more
output tokens. Per step the loop needs only aggregates, each kept in O(1):

- finishes: a heap keyed by the counter value at which a member reaches its output
  length (then by its admission order, the order the per-request path frees in);
- new KV blocks: a member needs a block in the step where `computed + lookahead` is a
  multiple of the block size, so the pool counts members per residue of
  `c0 - T0 + lookahead` mod block size;
- KV tokens: the sum of `c0 - T0` plus `T` times the number of members;
- KV area (token x steps) of the current attempt: in closed form when the member leaves.

A member leaves (its `Request`, and the KV model's per-request counts, are written back:
"materialised") when it finishes, when a decision names it (run, preempt, restart), or
when the scheduler asks for every request's exact state (`flush`, its per-request
fallback). With automatic prefix caching the pool pops the step's fresh blocks from the
free queue at the step (evictions happen when they would), keeps them as anonymous spares
(fresh blocks are interchangeable), and hands them to a member, registering its filled
blocks, when it leaves. That is exact only for blocks keyed by the request's own id, so a
request joins only when every block it will still fill is past its `prefix_block_ids`
and (after an eviction) none of those own keys is still cached.

Decision semantics (`Decision.pool`): every member decodes one token, before the
decision's `run` entries in batch order, members in admission order. Members left out of a
decision without `pool` are paused, as any resident request left out of `run` is.
"""

from __future__ import annotations

import heapq

from kvsched.request import Request


class DecodePool:
    """Decoding requests advanced by a shared counter (see the module docstring)."""

    __slots__ = ("_adm", "_apc", "_bs", "_cnt", "_heap", "_joins", "_kv", "_la", "_max_heap", "_min_heap", "_range",
                 "_spare", "_sum_base", "members", "outside", "outside_view", "t")

    def __init__(self, kv, lookahead_tokens: int) -> None:
        self._kv = kv
        self._bs = kv.block_size
        self._la = lookahead_tokens
        self._apc = kv.prefix_caching
        self.t = 0  # the shared step counter
        self.members: dict[int, tuple[Request, int, int]] = {}  # id -> (request, T at join, join number)
        self._joins = 0
        self._heap: list[tuple[int, int, int, int]] = []  # (T at finish, admission seq, id, join number)
        self._cnt = [0] * self._bs  # members by (c0 - T0 + lookahead) mod block size
        self._sum_base = 0  # sum over members of c0 - T0
        # The longest and shortest member KV (BatchShape.max/min_decode_kv_len): heaps of
        # (+-(c0 - T0), join number, id), stale entries dropped when they reach the top.
        self._max_heap: list[tuple[int, int, int]] = []
        self._min_heap: list[tuple[int, int, int]] = []
        # (longest, shortest) c0 - T0 of the members, kept between membership changes that
        # could move it (a join widens it in O(1); a leave at either end drops it): the
        # heaps' tops are read only when it is None.
        self._range: tuple[int, int] | None = None
        self._adm: dict[int, int] = {}  # resident id -> admission sequence number
        self._spare: list[int] = []  # prefix caching: fresh blocks popped for members, not yet handed out
        # Resident requests that are not members, in the order they became so: the
        # requests a pool-aware scheduler still addresses one by one.
        self.outside: dict[int, Request] = {}
        self.outside_view = self.outside  # what schedulers read (the loop wraps it for blind schedulers)

    # --- what a scheduler reads ----------------------------------------------------------
    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def num_new_blocks(self) -> int:
        """KV blocks the members need if every one decodes this step."""
        return self._cnt[-self.t % self._bs]

    @property
    def num_kv_tokens(self) -> int:
        """KV tokens the members hold after decoding once more (the BatchShape charge)."""
        return self._sum_base + len(self.members) * (self.t + 1)

    def flush(self) -> None:
        """Every member leaves: each request and the KV model's counts become exact, for a
        scheduler that is about to read them one by one."""
        if self.members:
            for rid in list(self.members):
                self.leave(rid)
            self._heap.clear()
            self._max_heap.clear()
            self._min_heap.clear()
            self._range = None

    # --- loop side -----------------------------------------------------------------------
    def admitted(self, r: Request, seq: int) -> None:
        self._adm[r.request_id] = seq
        self.outside[r.request_id] = r

    def gone(self, rid: int) -> None:
        """A non-member resident request left the residency (finished or evicted)."""
        self.outside.pop(rid, None)
        self._adm.pop(rid, None)

    def try_join(self, r: Request) -> None:
        """`r` (resident, not a member) just became a plain decoder: join if exact."""
        rid = r.request_id
        c = r.num_computed_tokens
        bs = self._bs
        if self._apc:
            kv = self._kv
            ids = r.prefix_block_ids
            keyed = kv._num_keyed[rid]
            # Blocks it will fill must be keyed by its own id (no other request can hit them)...
            if ids is not None and len(ids) * r.prefix_block_size >= (keyed + 1) * bs:
                return
            # ... and none of those keys may survive from an earlier residency (registration
            # would then depend on when that copy is evicted).
            # (A lazily keyed request has none: kvcache admits it so only when none is left.)
            if (r.num_preemptions or r.num_restarts) and rid not in kv._lazy:
                cached, own = kv._cached, -1 - rid
                last = (r.prompt_len + r.output_len - 1) // bs
                # block_key(r, j, bs) for j in [keyed, last), inlined: past the ids (checked
                # above) every key is the request's own, (-1 - id, end of the block).
                for end in range((keyed + 1) * bs, last * bs + 1, bs):
                    if (own, end) in cached:
                        return
        t = self.t
        self._joins += 1
        del self.outside[rid]
        self.members[rid] = (r, t, self._joins)
        base = c - t
        self._sum_base += base
        self._cnt[(base + self._la) % bs] += 1
        heapq.heappush(self._heap, (t + r.output_len - r.num_output_tokens, self._adm[rid], rid, self._joins))
        heapq.heappush(self._max_heap, (-base, self._joins, rid))
        heapq.heappush(self._min_heap, (base, self._joins, rid))
        rng = self._range
        if rng is not None and (base > rng[0] or base < rng[1]):
            self._range = (max(rng[0], base), min(rng[1], base))  # rare: only when it widens

    def leave(self, rid: int) -> Request:
        """Materialise member `rid` and make it an outside resident again."""
        r, t0, _ = self.members.pop(rid)
        k = self.t - t0
        c0 = r.num_computed_tokens
        la, bs = self._la, self._bs
        base = c0 - t0
        rng = self._range
        if rng is not None and (base == rng[0] or base == rng[1]):
            self._range = None
        self._sum_base -= base
        self._cnt[(base + la) % bs] -= 1
        c = c0 + k
        r.num_computed_tokens = c
        r.num_output_tokens += k
        r.attempt_kv_area += k * (c0 + la) + k * (k + 1) // 2
        kv = self._kv
        total = c + la
        kv._tokens[rid] = total
        if self._apc:
            mine = kv._held[rid]
            need = -(-total // bs) - len(mine)
            if need > 0:
                spare = self._spare
                given = spare[-need:]
                del spare[-need:]
                mine.extend(given)
                if kv._lazy.get(rid) != 0:  # (a request holding only its own blocks keeps them at 0)
                    ref = kv._ref
                    for b in given:
                        ref[b] = 1
            kv._blocks[rid] = len(mine)
            full = c // bs
            done = kv._num_keyed[rid]
            if full > done and rid in kv._lazy:  # own blocks only (try_join): counted, keyed later
                kv._num_hidden += full - done
                kv._num_keyed[rid] = full
            elif full > done:
                kv._version += 1
                keys, cached, own = kv._key, kv._cached, -1 - rid
                for j in range(done, full):
                    key = (own, (j + 1) * bs)  # block_key: a member fills only its own blocks (try_join)
                    b = mine[j]
                    keys[b] = key
                    cached[key] = b
                kv._num_keyed[rid] = full
        else:
            kv._blocks[rid] = -(-total // bs)
        self.outside[rid] = r
        return r

    def min_left(self) -> int:
        """Decode steps until the first member finishes (members exist)."""
        heap, members = self._heap, self.members
        while True:
            t_fin, _, rid, join = heap[0]
            m = members.get(rid)
            if m is not None and m[2] == join:
                return t_fin - self.t
            heapq.heappop(heap)

    def _top(self, heap: list[tuple[int, int, int]]) -> int:
        members = self.members
        while True:
            key, join, rid = heap[0]
            m = members.get(rid)
            if m is not None and m[2] == join:
                return key
            heapq.heappop(heap)

    def decode_kv_range(self) -> tuple[int, int]:
        """(longest, shortest) KV a member holds before the step (members exist)."""
        rng = self._range
        if rng is None:
            rng = self._range = (-self._top(self._max_heap), self._top(self._min_heap))
        return rng[0] + self.t, rng[1] + self.t

    def min_slack(self) -> int:
        """Smallest number of free KV slots a member holds beyond its tokens."""
        cnt, bs, t = self._cnt, self._bs, self.t
        best = bs
        for q in range(bs):
            if cnt[q]:
                s = -(q + t) % bs
                if s < best:
                    best = s
                    if s == 0:
                        break
        return best

    def new_blocks_over(self, k: int) -> int:
        """KV blocks the members need to decode `k` more steps."""
        if k == 1:
            return self.num_new_blocks
        cnt, bs, t = self._cnt, self._bs, self.t
        total = 0
        for q in range(bs):
            c = cnt[q]
            if c:
                first = (-q - t) % bs  # steps until this class next needs a block
                if first < k:
                    total += c * (1 + (k - 1 - first) // bs)
        return total

    def allocate(self, num_steps: int, num_new_blocks: int) -> None:
        """The members' KV for `num_steps` decode steps (a step or a fast-forwarded run):
        counts, and with prefix caching the fresh blocks popped now (evicting what they held)."""
        kv = self._kv
        kv._num_used_tokens += len(self.members) * num_steps
        if self._apc and num_new_blocks:
            if num_new_blocks > kv._num_free:
                raise AssertionError("decode pool allocation beyond free blocks (checked before)")
            kv._num_free -= num_new_blocks
            kv._take(self._spare, num_new_blocks, False)  # reference counts set when handed out
            kv._num_used_blocks = kv.num_blocks - kv._num_free
        elif not self._apc:
            kv._num_used_blocks += num_new_blocks

    def advance(self, num_steps: int) -> list[Request] | tuple[()]:
        """The members decoded `num_steps` times: move the counter and return the members
        that reached their output length (materialised, left), in admission order."""
        self.t += num_steps
        t = self.t
        heap, members = self._heap, self.members
        if not heap or heap[0][0] > t:
            return ()  # (most steps: no member is due)
        done: list[Request] = []
        while heap and heap[0][0] <= t:
            _, _, rid, join = heapq.heappop(heap)
            m = members.get(rid)
            if m is None or m[2] != join:
                continue  # it left the pool earlier
            done.append(self.leave(rid))
        return done
