"""The KV cache: a capacity in tokens, handed out in blocks of `block_size` tokens.

Shared by the simulator and the engine. `block_size=1` is the papers' token-exact
model; 16 is vLLM's page size. The simulator only needs block counts; the engine
also needs the block ids to index its K/V tensors, so ids are tracked on request
(`track_block_ids=True`) rather than always, which keeps million-request sweeps fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from kvsched.request import RequestStatus

# Bound once: reading an Enum member off its class goes through the metaclass's
# __getattr__ hook, about 15x the cost of a global, and these are read every step.
_FINISHED = RequestStatus.FINISHED


class KVCapacityError(RuntimeError):
    """An allocation that does not fit: always a scheduler bug, never silently clipped."""


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass(slots=True)
class KVCache:
    """Paged KV accounting without prefix caching (`prefix_caching` is False)."""

    prefix_caching = False  # a class attribute: PrefixCachingKVCache sets it
    capacity_tokens: int
    block_size: int = 16
    track_block_ids: bool = False
    num_blocks: int = field(init=False)
    _num_used_blocks: int = field(init=False, default=0)
    _num_used_tokens: int = field(init=False, default=0)
    _blocks: dict[int, int] = field(init=False, default_factory=dict)  # request -> blocks
    _tokens: dict[int, int] = field(init=False, default_factory=dict)  # request -> tokens
    _block_ids: dict[int, list[int]] = field(init=False, default_factory=dict)
    _free_ids: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.capacity_tokens < self.block_size:
            raise ValueError(
                f"capacity_tokens ({self.capacity_tokens}) must hold at least one block of {self.block_size}"
            )
        self.num_blocks = self.capacity_tokens // self.block_size
        if self.track_block_ids:
            # Pop from the end hands out low ids first, which keeps engine tests readable.
            self._free_ids = list(range(self.num_blocks - 1, -1, -1))

    # --- queries -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - self._num_used_blocks

    @property
    def num_free_tokens(self) -> int:
        """Free capacity in tokens, counting whole free blocks only."""
        return self.num_free_blocks * self.block_size

    @property
    def num_used_tokens(self) -> int:
        """Tokens actually cached (not rounded up to blocks)."""
        return self._num_used_tokens

    @property
    def usage(self) -> float:
        """Fraction of blocks in use."""
        return self._num_used_blocks / self.num_blocks

    def num_tokens_of(self, request_id: int) -> int:
        return self._tokens.get(request_id, 0)

    def num_blocks_of(self, request_id: int) -> int:
        return self._blocks.get(request_id, 0)

    def block_ids(self, request_id: int) -> list[int]:
        if not self.track_block_ids:
            raise RuntimeError("KVCache was built with track_block_ids=False")
        return self._block_ids.get(request_id, [])

    def num_new_blocks(self, request_id: int, num_tokens: int) -> int:
        """Extra blocks `request_id` needs to hold `num_tokens` tokens in total."""
        return max(0, blocks_for(num_tokens, self.block_size) - self._blocks.get(request_id, 0))

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return self.num_new_blocks(request_id, num_tokens) <= self.num_free_blocks

    def is_resident(self, request_id: int) -> bool:
        return request_id in self._blocks

    # --- mutations -----------------------------------------------------------------
    def allocate(self, request_id: int, num_tokens: int) -> None:
        """Grow `request_id` so that it holds `num_tokens` tokens in total."""
        old_tokens = self._tokens.get(request_id, 0)
        if num_tokens < old_tokens:
            raise ValueError(f"request {request_id}: cannot shrink KV from {old_tokens} to {num_tokens} tokens")
        new_blocks = self.num_new_blocks(request_id, num_tokens)
        if new_blocks > self.num_free_blocks:
            raise KVCapacityError(
                f"request {request_id} needs {new_blocks} more blocks for {num_tokens} tokens, "
                f"only {self.num_free_blocks} of {self.num_blocks} free (block_size={self.block_size})"
            )
        self._blocks[request_id] = self._blocks.get(request_id, 0) + new_blocks
        self._tokens[request_id] = num_tokens
        self._num_used_blocks += new_blocks
        self._num_used_tokens += num_tokens - old_tokens
        if self.track_block_ids:
            ids = self._block_ids.setdefault(request_id, [])
            for _ in range(new_blocks):
                ids.append(self._free_ids.pop())

    def allocate_many(self, totals: list[tuple[int, int]], num_new_blocks: int) -> None:
        """`allocate` for a whole step at once: (request_id, total tokens) pairs whose
        extra blocks sum to `num_new_blocks` (already checked against free blocks)."""
        if num_new_blocks > self.num_blocks - self._num_used_blocks:
            raise KVCapacityError(
                f"step needs {num_new_blocks} more blocks, only {self.num_free_blocks} of {self.num_blocks} free"
            )
        if self.track_block_ids:
            for rid, total in totals:
                self.allocate(rid, total)
            return
        blocks, tokens, bs = self._blocks, self._tokens, self.block_size
        added_tokens = 0
        for rid, total in totals:
            added_tokens += total - tokens.get(rid, 0)
            tokens[rid] = total
            blocks[rid] = -(-total // bs)
        self._num_used_blocks += num_new_blocks
        self._num_used_tokens += added_tokens

    @property
    def block_counts(self):
        """Live read-only map request id -> blocks held."""
        return MappingProxyType(self._blocks)

    def free(self, request_id: int) -> None:
        """Release every block of `request_id` (finish or preemption)."""
        blocks = self._blocks.pop(request_id, None)
        if blocks is None:
            raise KeyError(f"request {request_id} holds no KV blocks")
        self._num_used_blocks -= blocks
        self._num_used_tokens -= self._tokens.pop(request_id)
        if self.track_block_ids:
            self._free_ids.extend(reversed(self._block_ids.pop(request_id)))

    def check(self) -> None:
        """Assert the internal invariants (used in tests and debug runs)."""
        assert 0 <= self._num_used_blocks <= self.num_blocks, (self._num_used_blocks, self.num_blocks)
        assert self._num_used_blocks == sum(self._blocks.values())
        assert self._num_used_tokens == sum(self._tokens.values())
        for rid, tokens in self._tokens.items():
            assert self._blocks[rid] == blocks_for(tokens, self.block_size) or tokens == 0, rid
        if self.track_block_ids:
            held = [b for ids in self._block_ids.values() for b in ids]
            assert len(held) == len(set(held)) == self._num_used_blocks
            assert len(self._free_ids) == self.num_free_blocks


# --- automatic prefix caching (vLLM v1's block pool) ---------------------------------------


class _Dead:
    """The key of a free block a finished request filled with its own tokens: cached in the
    eager model, but no lookup can ever ask for it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEAD"


DEAD = _Dead()


class _Own:
    """The kind of a preempted request's own run in the free queue (see PrefixCachingKVCache)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OWN"


OWN = _Own()


def block_key(request, j: int, block_size: int):
    """The identity of full block `j` (tokens [j*bs, (j+1)*bs)) of `request`, chained.

    With `prefix_block_ids` (one id per `prefix_block_size` tokens, already chained: equal
    ids mean equal tokens up to the end of that id block), a block ending at token `end`
    that the ids cover is `(id of the id block holding token end-1, end)`: the tokens up to
    `end` are fixed by that id. Beyond the ids (or without them) the block is the
    request's own, `(-1 - request_id, end)`: only the same request's re-admission after a
    preemption can hit it (generation is treated as deterministic, as a recompute is)."""
    end = (j + 1) * block_size
    ids = request.prefix_block_ids
    if ids is not None:
        pbs = request.prefix_block_size
        if end <= len(ids) * pbs:
            return (ids[(end - 1) // pbs], end)
    return (-1 - request.request_id, end)


@dataclass(slots=True)
class PrefixCachingKVCache(KVCache):
    """KVCache with vLLM v1's automatic prefix caching, token-id free.

    A pool of `num_blocks` blocks with reference counts. A block becomes cached (findable
    by its `block_key`) once the tokens allocated for it fill it; a freed block keeps its
    key and goes to the tail of the free queue (a request's blocks are freed tail first,
    so its last blocks are evicted first), a freed block without a key to its head. A
    fresh block is always the head of the free queue, whose key (if any) is evicted:
    LRU among cached free blocks. Shared blocks count once against capacity; cached
    blocks with no holder count as free (evictable). `lookup` finds the longest run of
    cached full blocks of a request, at most `num_tokens - 1` tokens (the last token is
    always computed); `admit` makes a request hold them before its first allocation.
    Two requests computing the same block at once both keep their copy, but only the
    first registered is findable (vLLM keeps both findable).

    Own keys are registered lazily (`lazy_own_keys`, the default): a block keyed by the
    request's own id (past its `prefix_block_ids`) can only be hit by the same request
    after a preemption, so while a request that never held KV before is resident its own
    blocks are only counted; they enter the key map when it is preempted or restarted
    (exactly the keys eager registration would hold: no copy of its own keys can exist
    before), and when it finishes they go to the free queue under the `DEAD` key, which
    nothing can look up but which keeps their place in LRU order and their eviction
    count. That makes a prefill and a finish O(blocks) list work without building or
    hashing a key per block. `lazy_own_keys=False` is the eager path, kept for the test
    that runs both. A finished request whose keys are all its own returns its blocks as
    at most two run nodes of the free queue (`_push_run`), and fresh blocks are taken as
    slices of them (`_take`): the same blocks in the same order, without a step per block.
    A request without prefix ids that comes back after a preemption is lazily keyed again
    from its hit on, when no copy of its later own keys is still cached.

    A preempted request that held only its own blocks leaves its keyed blocks as one "own
    run" node (`_own_runs`), last block first as block-by-block freeing would, with its keys
    counted but not in the key map. Nothing is inserted into the middle of the queue and
    only this request can look its keys up, so the run stays contiguous and evictions from
    the head take its highest blocks first: what is still cached is always its blocks
    [0, m). `lookup` is then a slice, and an `admit` of the whole run unlinks one node and
    makes the request a holder of only its own blocks again (no copy of its keys is left).
    Any other hit (capped at `num_tokens - 1` tokens, or none) first turns the run into
    keyed single nodes in its place, the eager state, and goes the general way.
    """

    prefix_caching = True
    lookahead_tokens: int = 0  # slots beyond the computed tokens (not cached: not computed yet)
    _ref: list[int] = field(init=False, default_factory=list)  # block -> holders
    _key: list = field(init=False, default_factory=list)  # block -> its key, or None
    _cached: dict = field(init=False, default_factory=dict)  # key -> block
    # The free queue, head evicted first: a doubly linked list over block ids with two
    # sentinels (num_blocks = head, num_blocks + 1 = tail), O(1) at both ends and in the middle.
    _next: list[int] = field(init=False, default_factory=list)
    _prev: list[int] = field(init=False, default_factory=list)
    _num_free: int = field(init=False, default=0)
    _held: dict[int, list[int]] = field(init=False, default_factory=dict)  # request -> its blocks in order
    _reqs: dict = field(init=False, default_factory=dict)  # request id -> Request (for block keys)
    _num_keyed: dict[int, int] = field(init=False, default_factory=dict)  # request -> blocks registered
    num_evicted_blocks: int = field(init=False, default=0)
    lazy_own_keys: bool = True
    # Requests whose own keys are registered lazily now (resident, first residency) -> the
    # index of their first own block; `_num_hidden`: lazily keyed blocks, held or DEAD in
    # the queue (findable in the eager path, counted by num_cached_blocks).
    _lazy: dict[int, int] = field(init=False, default_factory=dict)
    _had_kv: set = field(init=False, default_factory=set)  # requests that held KV before
    _num_hidden: int = field(init=False, default=0)
    # Lazy mode: lookups memoised per waiting request, valid while the key map is unchanged
    # (`_version` moves whenever a key may have been added or removed).
    _version: int = field(init=False, default=0)
    _memo: dict = field(init=False, default_factory=dict)
    # Run nodes of the free queue (linked-list nodes past the two sentinels): node -> [block
    # ids in queue order, DEAD or None]. A finished lazily keyed request frees its blocks as
    # at most two runs and a pop takes slices of them: the same blocks in the same order as
    # one node per block, without a Python step per block. A request whose blocks are all
    # its own (`_lazy` value 0, `_pure`) holds each once, and its reference counts stay 0 in
    # `_ref` (implicitly 1) so that neither taking nor freeing its blocks touches them.
    _runs: dict = field(init=False, default_factory=dict)
    _free_nodes: list[int] = field(init=False, default_factory=list)
    # Preempted own runs: request id -> its run node, [its keyed blocks in block order (the
    # queue holds them last block first), OWN, request id]. Their keys are not in `_cached`
    # (counted in `_num_hidden`); evictions take the highest blocks, so what is left is
    # always blocks [0, m) of the request, and `lookup`/`admit` take it whole.
    _own_runs: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        KVCache.__post_init__(self)
        self._ref = [0] * self.num_blocks
        self._key = [None] * self.num_blocks
        n = self.num_blocks
        # head (n) -> 0 -> 1 -> ... -> n-1 -> tail (n+1)
        self._next = [*range(1, n), n + 1, 0, -1]
        self._prev = [n, *range(n - 1), -1, n - 1]
        self._num_free = n
        self._free_ids = []

    def _push(self, b: int, front: bool) -> None:
        nxt, prv = self._next, self._prev
        if front:
            p = self.num_blocks
            q = nxt[p]
        else:
            q = self.num_blocks + 1
            p = prv[q]
        nxt[p], prv[b], nxt[b], prv[q] = b, p, q, b
        self._num_free += 1

    def free_queue(self) -> list[int]:
        """Free block ids, head (next evicted) first."""
        out, nxt, b, end, runs = [], self._next, self._next[self.num_blocks], self.num_blocks + 1, self._runs
        while b != end:
            if b > end:
                run = runs[b]
                out.extend(reversed(run[0]) if run[1] is OWN else run[0])
            else:
                out.append(b)
            b = nxt[b]
        return out

    def _take(self, mine: list[int], need: int, setref: bool) -> None:
        """Move the first `need` blocks of the free queue to the end of `mine`, evicting their
        keys (the caller checked `need` against and took it off `_num_free`)."""
        head, tail = self.num_blocks, self.num_blocks + 1
        nxt, prv, keys, ref, runs = self._next, self._prev, self._key, self._ref, self._runs
        b = nxt[head]
        evicted = hidden = 0
        while need:
            if b > tail:  # a run: a slice of it
                run = runs[b]
                ids, kind = run[0], run[1]
                t = len(ids)
                if kind is OWN:  # block order: its highest blocks are next in the queue
                    if t > need:
                        taken = ids[-need:]
                        del ids[-need:]
                        t = need
                    else:
                        taken = ids
                        del runs[b], self._own_runs[run[2]]
                        self._free_nodes.append(b)
                        b = nxt[b]
                    taken.reverse()
                elif t > need:
                    taken = ids[:need]
                    del ids[:need]
                    t = need
                else:
                    taken = ids
                    del runs[b]
                    self._free_nodes.append(b)
                    b = nxt[b]
                if kind is not None:  # DEAD or OWN: evicted keys (counted as hidden)
                    hidden += t
                if setref:
                    for x in taken:
                        ref[x] = 1
                mine.extend(taken)
                need -= t
                continue
            k = keys[b]
            if k is not None:  # evict the least recently freed cached block
                keys[b] = None
                if k is DEAD:
                    hidden += 1
                else:
                    evicted += 1
                    if self._cached.get(k) == b:
                        del self._cached[k]
                        self._version += 1
            if setref:
                ref[b] = 1
            mine.append(b)
            b = nxt[b]
            need -= 1
        nxt[head], prv[b] = b, head
        if hidden or evicted:
            self._num_hidden -= hidden
            self.num_evicted_blocks += hidden + evicted

    def _push_run(self, ids: list[int], kind, front: bool) -> int:
        """Put the blocks `ids` in the free queue as one node of `kind` and return it: keyless
        (None) or DEAD blocks in queue order, an OWN run in block order (queue order reversed).
        The linking repeats `_push`'s, inlined there because it runs once per freed block."""
        nxt, prv = self._next, self._prev
        if self._free_nodes:
            node = self._free_nodes.pop()
        else:
            node = len(nxt)
            nxt.append(-1)
            prv.append(-1)
        self._runs[node] = [ids, kind]
        if front:
            p = self.num_blocks
            q = nxt[p]
        else:
            q = self.num_blocks + 1
            p = prv[q]
        nxt[p], prv[node], nxt[node], prv[q] = node, p, q, node
        return node

    def _unlink_own_run(self, rid: int) -> list[int]:
        """Take request `rid`'s own run out of the free queue; its blocks in block order."""
        node = self._own_runs.pop(rid)
        ids = self._runs.pop(node)[0]
        nxt, prv = self._next, self._prev
        p, q = prv[node], nxt[node]
        nxt[p], prv[q] = q, p
        self._free_nodes.append(node)
        return ids

    def _key_own_run(self, rid: int) -> None:
        """Turn request `rid`'s own run into single keyed nodes in its place: the eager state."""
        node = self._own_runs.pop(rid)
        ids = self._runs.pop(node)[0]
        nxt, prv, keys, cached = self._next, self._prev, self._key, self._cached
        p, q = prv[node], nxt[node]
        own, bs = -1 - rid, self.block_size
        for j in range(len(ids) - 1, -1, -1):
            b = ids[j]
            k = (own, (j + 1) * bs)
            cached[k] = b
            keys[b] = k
            nxt[p] = b
            prv[b] = p
            p = b
        nxt[p], prv[q] = q, p
        self._free_nodes.append(node)
        self._num_hidden -= len(ids)
        self._version += 1

    # --- queries -------------------------------------------------------------------
    def block_ids(self, request_id: int) -> list[int]:
        return self._held.get(request_id, [])

    @property
    def num_cached_blocks(self) -> int:
        """Blocks findable by key (held or free)."""
        return len(self._cached) + self._num_hidden

    def lookup(self, request) -> list[int]:
        """The cached blocks a request with no KV would reuse: the longest run of its full
        blocks found by key, covering at most `num_tokens - 1` tokens."""
        cached, bs = self._cached, self.block_size
        out: list[int] = []
        if self.lazy_own_keys:
            rid = request.request_id
            if not request.prefix_block_ids and rid not in self._had_kv:
                return out  # only its own keys, and none can exist yet
            node = self._own_runs.get(rid)
            if node is not None:  # its cached keys: blocks [0, m) of its own run
                ids = self._runs[node][0]
                cap = (request.num_tokens - 1) // bs
                return ids[:cap] if cap < len(ids) else ids[:]
            got = self._memo.get(rid)
            if got is not None and got[0] == self._version and got[1] == request.num_tokens:
                return got[2]
            self._memo[rid] = (self._version, request.num_tokens, out)
            if not request.prefix_block_ids:  # block_key, inlined: only its own keys
                own = -1 - rid
                for end in range(bs, ((request.num_tokens - 1) // bs + 1) * bs, bs):
                    blk = cached.get((own, end))
                    if blk is None:
                        break
                    out.append(blk)
                return out
        for j in range((request.num_tokens - 1) // bs):
            blk = cached.get(block_key(request, j, bs))
            if blk is None:
                break
            out.append(blk)
        return out

    def lookup_hit(self, request) -> tuple[list[int], int]:
        """`lookup(request)` and how many of its blocks are free (`num_evictable`) at once: an
        own run's blocks all are, so that case needs no step per block."""
        rid = request.request_id
        if self.lazy_own_keys and not request.prefix_block_ids and rid not in self._had_kv:
            return [], 0  # (lookup's first case)
        node = self._own_runs.get(rid)
        if node is not None:
            ids = self._runs[node][0]
            cap = (request.num_tokens - 1) // self.block_size
            blocks = ids[:cap] if cap < len(ids) else ids[:]
            return blocks, len(blocks)
        blocks = self.lookup(request)
        return blocks, self.num_evictable(blocks) if blocks else 0

    def num_evictable(self, blocks: list[int]) -> int:
        """How many of `blocks` are free (cached, no holder): reusing them takes free blocks."""
        if not blocks:
            return 0
        return list(map(self._ref.__getitem__, blocks)).count(0)  # (no Python step per block)

    def num_freed_by(self, request_id: int) -> int:
        """Blocks that freeing `request_id` would return to the free queue (those it alone holds)."""
        if self._lazy.get(request_id) == 0:
            return len(self._held[request_id])  # each held once (reference counts left at 0)
        ref = self._ref
        return sum(1 for b in self._held.get(request_id, ()) if ref[b] == 1)

    # --- mutations -----------------------------------------------------------------
    def admit(self, request, blocks: list[int]) -> None:
        """`request` (holding no KV) starts holding the cached `blocks` (its prefix hit, maybe
        none); its later allocations are keyed from its own blocks."""
        rid = request.request_id
        if rid in self._held:
            raise ValueError(f"request {rid} already holds KV blocks")
        ref, bs, nxt, prv = self._ref, self.block_size, self._next, self._prev
        if not blocks and self.lazy_own_keys and rid not in self._had_kv:
            # First residency, no hit (the usual admission): the general path below, shortened.
            ids = request.prefix_block_ids
            self._held[rid] = []
            self._reqs[rid] = request
            self._memo.pop(rid, None)
            self._lazy[rid] = len(ids) * request.prefix_block_size // bs if ids else 0
            self._num_keyed[rid] = self._blocks[rid] = self._tokens[rid] = 0
            self._num_used_blocks = self.num_blocks - self._num_free
            return
        if rid in self._own_runs:
            if blocks == self._runs[self._own_runs[rid]][0]:
                # Its whole own run: no copy of its keys is left, so it holds only its own
                # blocks again, each once (reference counts left at 0), lazily keyed.
                mine = self._unlink_own_run(rid)
                n = len(mine)
                self._num_free -= n
                self._held[rid] = mine
                self._reqs[rid] = request
                self._memo.pop(rid, None)
                self._lazy[rid] = 0
                self._num_keyed[rid] = n
                self._blocks[rid] = n
                self._tokens[rid] = n * bs
                self._num_used_blocks = self.num_blocks - self._num_free
                self._num_used_tokens += n * bs
                return
            self._key_own_run(rid)  # a copy past the hit survives: the eager state, keys and all
        shared = 0
        for b in blocks:
            if ref[b] == 0:  # a cached free block: out of the free queue (a single node)
                p, q = prv[b], nxt[b]
                nxt[p], prv[q] = q, p
                self._num_free -= 1
            else:
                shared += 1
            ref[b] += 1
        self._held[rid] = list(blocks)
        self._reqs[rid] = request
        self._memo.pop(rid, None)
        if self.lazy_own_keys:
            ids = request.prefix_block_ids
            if rid not in self._had_kv:
                # Blocks ending past the ids are its own (block_key); a hit stops before them.
                own_from = len(ids) * request.prefix_block_size // bs if ids else 0
                if own_from or not blocks:  # (own_from 0 with a hit cannot come from lookup)
                    self._lazy[rid] = own_from
            elif not ids:
                # Back after a preemption, every key its own: lazily keyed past its hit again
                # if no copy of those keys is still cached (as in its first residency).
                cached, own = self._cached, -1 - rid
                end = (request.prompt_len + request.output_len + self.lookahead_tokens) // bs * bs
                for e in range((len(blocks) + 1) * bs, end + bs, bs):
                    if (own, e) in cached:
                        break
                else:
                    self._lazy[rid] = len(blocks)
        self._num_keyed[rid] = len(blocks)
        self._blocks[rid] = len(blocks)
        self._tokens[rid] = len(blocks) * bs
        self._num_used_blocks = self.num_blocks - self._num_free
        self._num_used_tokens += (len(blocks) - shared) * bs

    def allocate(self, request_id: int, num_tokens: int) -> None:
        old = self._tokens.get(request_id, 0)
        if num_tokens < old:
            raise ValueError(f"request {request_id}: cannot shrink KV from {old} to {num_tokens} tokens")
        self.allocate_many([(request_id, num_tokens)], self.num_new_blocks(request_id, num_tokens))

    def allocate_many(self, totals: list[tuple[int, int]], num_new_blocks: int) -> None:
        if num_new_blocks > self._num_free:
            raise KVCapacityError(
                f"step needs {num_new_blocks} more blocks, only {self._num_free} of {self.num_blocks} free"
            )
        # Runs per scheduled request per step: locals and inlined list operations.
        bs, la, keys, cached = self.block_size, self.lookahead_tokens, self._key, self._cached
        held, tokens, blocks, keyed, lazy = self._held, self._tokens, self._blocks, self._num_keyed, self._lazy
        added = 0
        for rid, total in totals:
            mine = held[rid]  # KeyError: never admitted
            need = -(-total // bs) - len(mine)
            if need > 0:
                if need > self._num_free:
                    raise KVCapacityError(f"request {rid} needs {need} more blocks, only {self._num_free} free")
                self._num_free -= need
                self._take(mine, need, lazy.get(rid) != 0)
                blocks[rid] = len(mine)
            added += total - tokens[rid]
            tokens[rid] = total
            # Register the blocks this step fills (vLLM caches them when it allocates them).
            full = (total - la) // bs
            done = keyed[rid]
            if full > done:
                own_from = lazy.get(rid)
                if own_from is not None:
                    if own_from <= done:  # only own blocks: counted, keyed when it leaves
                        self._num_hidden += full - done
                        keyed[rid] = full
                        continue
                    if full > own_from:
                        self._num_hidden += full - own_from
                        full, lazy_full = own_from, full
                    else:
                        lazy_full = full
                else:
                    lazy_full = full
                # block_key, inlined: this runs for every block a prefill fills.
                self._version += 1
                r = self._reqs[rid]
                ids, pbs, own = r.prefix_block_ids, r.prefix_block_size, -1 - r.request_id
                covered = len(ids) * pbs if ids is not None else 0
                for j in range(done, full):
                    end = (j + 1) * bs
                    k = (ids[(end - 1) // pbs], end) if end <= covered else (own, end)
                    b = mine[j]
                    if keys[b] is None and k not in cached:
                        cached[k] = b
                        keys[b] = k
                keyed[rid] = lazy_full
        self._num_used_tokens += added
        self._num_used_blocks = self.num_blocks - self._num_free

    def free(self, request_id: int) -> None:
        mine = self._held.pop(request_id, None)
        if mine is None:
            raise KeyError(f"request {request_id} holds no KV blocks")
        ref, keys, bs = self._ref, self._key, self.block_size
        own_from = self._lazy.pop(request_id, None)
        if own_from == 0:
            self._free_own(request_id, mine)
            return
        if self.lazy_own_keys:
            r = self._reqs[request_id]
            if r.status is _FINISHED and not r.prefix_block_ids:
                self._free_finished_own(request_id, mine, own_from)
                return
        if own_from is not None:
            r = self._reqs[request_id]
            keyed = self._num_keyed[request_id]
            if r.status is _FINISHED:  # its own keys can never be looked up
                for j in range(own_from, keyed):
                    keys[mine[j]] = DEAD
            else:  # it may come back: its own keys, as eager registration made them
                self._version += 1
                self._num_hidden -= max(0, keyed - own_from)
                cached, own = self._cached, -1 - request_id
                for j in range(own_from, keyed):
                    k = (own, (j + 1) * bs)
                    b = mine[j]
                    cached[k] = b
                    keys[b] = k
        if self._reqs[request_id].status is not _FINISHED:
            self._had_kv.add(request_id)  # it may come back, and find its own keys
        still_shared = 0
        # Tail first: a request's last blocks are evicted first. Keyless blocks (never
        # findable) go to the head, to be reused first (vLLM: LIFO, for locality).
        nxt, prv, head, tail = self._next, self._prev, self.num_blocks, self.num_blocks + 1
        freed = 0
        for b in reversed(mine):
            c = ref[b] - 1
            ref[b] = c
            if c:
                still_shared += 1
                continue
            freed += 1
            if keys[b] is None:  # after the head sentinel
                p, q = head, nxt[head]
            else:  # before the tail sentinel
                p, q = prv[tail], tail
            nxt[p], prv[b], nxt[b], prv[q] = b, p, q, b
        self._num_free += freed
        self._num_used_tokens -= self._tokens.pop(request_id) - still_shared * bs
        del self._blocks[request_id], self._reqs[request_id], self._num_keyed[request_id]
        self._num_used_blocks = self.num_blocks - self._num_free

    def _free_own(self, request_id: int, mine: list[int]) -> None:
        """`free` for a lazily keyed request holding only its own blocks (each held once, its
        reference counts left at 0): the same queue as freeing block by block. Keyless blocks
        (from `keyed` on) end up after the head in block order, keyed ones before the tail,
        last block first, as two runs without a step per block: DEAD for a finished request,
        its own run for a preempted one."""
        r, keyed = self._reqs.pop(request_id), self._num_keyed.pop(request_id)
        n = len(mine)
        if n == keyed + 1:  # one keyless block (the usual partial last one): a single node
            b = mine[keyed]
            nxt, prv = self._next, self._prev
            p = self.num_blocks
            q = nxt[p]
            nxt[p], prv[b], nxt[b], prv[q] = b, p, q, b
        elif n > keyed:
            self._push_run(mine[keyed:], None, True)
        if keyed:
            if r.status is _FINISHED:  # its own keys can never be looked up
                dead = mine[keyed - 1::-1]
                self._push_run(dead, DEAD, False)
            else:  # it may come back: its keyed blocks as its own run, last block first
                node = self._push_run(mine if keyed == len(mine) else mine[:keyed], OWN, False)
                self._runs[node].append(request_id)
                self._own_runs[request_id] = node
        if r.status is not _FINISHED:
            self._had_kv.add(request_id)
        self._num_free += n
        self._num_used_tokens -= self._tokens.pop(request_id)
        del self._blocks[request_id]
        self._num_used_blocks = self.num_blocks - self._num_free

    def _free_finished_own(self, request_id: int, mine: list[int], own_from: int | None) -> None:
        """`free` for a finished request without prefix ids that held KV before: every key
        it holds is its own, so only it could hold its blocks (each once) and nothing can
        look them up any more. Its keyed blocks (registered when it was preempted, or
        lazily counted from `own_from` since it came back) become DEAD, as a finished
        lazily keyed request's: the queue gets the same blocks in the same order as freeing
        block by block (keyless ones after the head in block order, keyed ones before the
        tail, last block first), as two runs."""
        ref, keys, cached = self._ref, self._key, self._cached
        keyless: list[int] = []
        dead: list[int] = []
        if own_from is not None:  # [0, own_from) its hit, [own_from, keyed) counted, then keyless
            keyed = self._num_keyed[request_id]
            for b in mine:
                ref[b] = 0
            for b in mine[:own_from]:
                del cached[keys[b]]
                keys[b] = None
            keyless = mine[keyed:]
            dead = mine[:keyed]
            self._num_hidden += own_from
        else:
            for b in mine:
                ref[b] = 0
                k = keys[b]
                if k is None:
                    keyless.append(b)
                else:
                    keys[b] = None
                    del cached[k]
                    dead.append(b)
            self._num_hidden += len(dead)
        if keyless:
            self._push_run(keyless, None, True)
        if dead:
            self._version += 1
            dead.reverse()
            self._push_run(dead, DEAD, False)
        self._num_free += len(mine)
        self._num_used_tokens -= self._tokens.pop(request_id)
        del self._blocks[request_id], self._reqs[request_id], self._num_keyed[request_id]
        self._num_used_blocks = self.num_blocks - self._num_free

    def check(self) -> None:
        bs = self.block_size
        refs = [0] * self.num_blocks
        for rid, mine in self._held.items():
            assert len(mine) == len(set(mine))
            for b in mine:
                refs[b] += 1
        pure = [b for rid, mine in self._held.items() if self._lazy.get(rid) == 0 for b in mine]
        assert all(refs[b] == 1 for b in pure), "blocks of a request holding only its own are held once"
        stored = list(refs)
        for b in pure:
            stored[b] = 0
        assert stored == self._ref, "reference counts"
        queue = self.free_queue()
        assert len(queue) == self._num_free
        assert set(queue) == {b for b in range(self.num_blocks) if refs[b] == 0}, "free queue"
        assert all(self._key[b] is None for ids, *_ in self._runs.values() for b in ids), "run blocks are keyless"
        assert all(run[0] for run in self._runs.values()), "no empty run"
        assert self._num_used_blocks == self.num_blocks - self._num_free <= self.num_blocks
        for rid, mine in self._held.items():
            assert self._blocks[rid] == len(mine) == blocks_for(self._tokens[rid], bs) or self._tokens[rid] == 0, rid
        shared = sum((r - 1) * bs for r in refs if r > 1)
        assert self._num_used_tokens == sum(self._tokens.values()) - shared, "used tokens"
        assert self._num_used_tokens <= self._num_used_blocks * bs
        for k, b in self._cached.items():
            assert self._key[b] == k, (k, b)
        dead_keys = sum(1 for k in self._key if k is DEAD)
        dead = dead_keys + sum(len(run[0]) for run in self._runs.values() if run[1] is DEAD)
        lazy_held = sum(max(0, self._num_keyed[rid] - j0) for rid, j0 in self._lazy.items())
        own_run = sum(len(self._runs[node][0]) for node in self._own_runs.values())
        assert self._num_hidden == dead + lazy_held + own_run, "hidden keys"
        for rid, node in self._own_runs.items():
            assert self._runs[node][1:] == [OWN, rid] and rid not in self._held, rid
        assert sum(1 for run in self._runs.values() if run[1] is OWN) == len(self._own_runs), "own runs"
        # No copy of an own run's keys (nor of a request's holding only its own blocks) is keyed.
        no_copies = set(self._own_runs) | {rid for rid, j0 in self._lazy.items() if j0 == 0}
        assert not any(k[0] < 0 and -1 - k[0] in no_copies for k in self._cached), "own keys outside the run"
        assert sum(1 for b in queue if self._key[b] is DEAD) == dead_keys, "DEAD blocks are free"


def make_kv_cache(capacity_tokens: int, block_size: int = 16, *, prefix_caching: bool = False,
                  lookahead_tokens: int = 0) -> KVCache:
    """A KV cache, with automatic prefix caching or without."""
    if prefix_caching:
        return PrefixCachingKVCache(capacity_tokens, block_size, lookahead_tokens=lookahead_tokens)
    return KVCache(capacity_tokens, block_size)
