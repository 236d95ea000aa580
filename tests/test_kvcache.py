"""KV cache: block rounding, capacity errors, id tracking."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.kvcache import KVCache, KVCapacityError, blocks_for


def test_blocks_round_up():
    assert blocks_for(1, 16) == 1
    assert blocks_for(16, 16) == 1
    assert blocks_for(17, 16) == 2
    assert blocks_for(5, 1) == 5


def test_allocate_grows_by_blocks_and_free_returns_them():
    kv = KVCache(64, 16)
    assert kv.num_blocks == 4
    kv.allocate(7, 17)
    assert kv.num_blocks_of(7) == 2 and kv.num_free_blocks == 2 and kv.num_used_tokens == 17
    kv.allocate(7, 32)  # fits in the blocks it has
    assert kv.num_blocks_of(7) == 2 and kv.num_used_tokens == 32
    kv.free(7)
    assert kv.num_free_blocks == 4 and kv.num_used_tokens == 0
    kv.check()


def test_over_capacity_raises_with_numbers_and_changes_nothing():
    kv = KVCache(32, 16)
    kv.allocate(1, 20)
    with pytest.raises(KVCapacityError, match=r"request 2 needs 1 more blocks.*only 0 of 2 free"):
        kv.allocate(2, 5)
    assert kv.num_free_blocks == 0 and not kv.is_resident(2)


def test_free_unknown_and_shrink_raise():
    kv = KVCache(32, 16)
    with pytest.raises(KeyError, match="holds no KV"):
        kv.free(3)
    kv.allocate(1, 10)
    with pytest.raises(ValueError, match="cannot shrink"):
        kv.allocate(1, 5)


def test_invalid_construction():
    with pytest.raises(ValueError, match="block_size"):
        KVCache(10, 0)
    with pytest.raises(ValueError, match="at least one block"):
        KVCache(10, 16)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40), st.booleans()), max_size=60))
def test_block_ids_are_unique_and_conserved(ops):
    kv = KVCache(160, 16, track_block_ids=True)
    for rid, tokens, do_free in ops:
        if do_free and kv.is_resident(rid):
            kv.free(rid)
        elif tokens >= kv.num_tokens_of(rid) and kv.can_allocate(rid, tokens):
            kv.allocate(rid, tokens)
        kv.check()
        for r in range(6):
            assert len(kv.block_ids(r)) == kv.num_blocks_of(r)
