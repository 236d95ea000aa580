"""The KV cache: a capacity in tokens, handed out in blocks of `block_size` tokens.

Shared by the simulator and the engine. `block_size=1` is the papers' token-exact
model; 16 is vLLM's page size. The simulator only needs block counts; the engine
also needs the block ids to index its K/V tensors, so ids are tracked on request
(`track_block_ids=True`) rather than always, which keeps million-request sweeps fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType


class KVCapacityError(RuntimeError):
    """An allocation that does not fit: always a scheduler bug, never silently clipped."""


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass(slots=True)
class KVCache:
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
