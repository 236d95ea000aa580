# C types for kvsched/kvcache.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# KVCache and PrefixCachingKVCache become cdef classes with C-typed counters (the compiled copy
# drops `slots=True` from their @dataclass: see request.pxd), fields in the .py's order
# (request.pxd says why). The per-step methods (allocate_many, free, and prefix
# caching's queue work) become cpdef with C-typed locals; a Python subclass (the tests' checking
# models) still overrides them. The rest stay def methods.
cimport cython
from kvsched.request cimport Request

cdef class KVCache:
    cdef public Py_ssize_t capacity_tokens
    cdef public Py_ssize_t block_size
    cdef public bint track_block_ids
    cdef public Py_ssize_t num_blocks
    cdef public Py_ssize_t _num_used_blocks
    cdef public Py_ssize_t _num_used_tokens
    cdef public dict _blocks
    cdef public dict _tokens
    cdef public dict _block_ids
    cdef public list _free_ids

    @cython.locals(blocks=dict, tokens=dict, bs=Py_ssize_t, added_tokens=Py_ssize_t, total=Py_ssize_t)
    cpdef allocate_many(self, totals, Py_ssize_t num_new_blocks)

    cpdef free(self, request_id)


cdef class PrefixCachingKVCache(KVCache):
    cdef public Py_ssize_t lookahead_tokens
    cdef public list _ref
    cdef public list _key
    cdef public dict _cached
    cdef public list _next
    cdef public list _prev
    cdef public Py_ssize_t _num_free
    cdef public dict _held
    cdef public dict _reqs
    cdef public dict _num_keyed
    cdef public Py_ssize_t num_evicted_blocks
    cdef public bint lazy_own_keys
    cdef public dict _lazy
    cdef public set _had_kv
    cdef public Py_ssize_t _num_hidden
    cdef public Py_ssize_t _version
    cdef public dict _memo
    cdef public dict _runs
    cdef public list _free_nodes
    cdef public dict _own_runs

    @cython.locals(head=Py_ssize_t, tail=Py_ssize_t, nxt=list, prv=list, keys=list, ref=list, runs=dict,
                   b=Py_ssize_t, evicted=Py_ssize_t, hidden=Py_ssize_t, run=list, ids=list, t=Py_ssize_t,
                   taken=list, x=Py_ssize_t)
    cpdef _take(self, list mine, Py_ssize_t need, bint setref)

    @cython.locals(nxt=list, prv=list, node=Py_ssize_t, p=Py_ssize_t, q=Py_ssize_t)
    cpdef Py_ssize_t _push_run(self, list ids, kind, bint front) except? -1

    @cython.locals(bs=Py_ssize_t, la=Py_ssize_t, keys=list, cached=dict, held=dict, tokens=dict, blocks=dict,
                   keyed=dict, lazy=dict, added=Py_ssize_t, mine=list, need=Py_ssize_t, total=Py_ssize_t,
                   full=Py_ssize_t, done=Py_ssize_t, lazy_full=Py_ssize_t, r=Request, pbs=Py_ssize_t,
                   own=Py_ssize_t, covered=Py_ssize_t, j=Py_ssize_t, end=Py_ssize_t, b=Py_ssize_t)
    cpdef allocate_many(self, totals, Py_ssize_t num_new_blocks)

    @cython.locals(mine=list, ref=list, keys=list, bs=Py_ssize_t, r=Request, keyed=Py_ssize_t, cached=dict,
                   own=Py_ssize_t, j=Py_ssize_t, b=Py_ssize_t, still_shared=Py_ssize_t, nxt=list, prv=list,
                   head=Py_ssize_t, tail=Py_ssize_t, freed=Py_ssize_t, c=Py_ssize_t, p=Py_ssize_t, q=Py_ssize_t)
    cpdef free(self, request_id)

    @cython.locals(r=Request, keyed=Py_ssize_t, n=Py_ssize_t, b=Py_ssize_t, nxt=list, prv=list, p=Py_ssize_t,
                   q=Py_ssize_t, node=Py_ssize_t)
    cpdef _free_own(self, request_id, list mine)

    @cython.locals(ref=list, keys=list, cached=dict, keyless=list, dead=list, keyed=Py_ssize_t, b=Py_ssize_t)
    cpdef _free_finished_own(self, request_id, list mine, own_from)
