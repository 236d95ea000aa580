# C types for kvsched/pool.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# DecodePool becomes a cdef class with C-typed counters; the
# methods the loop calls per step become cpdef with C-typed locals. Python-level semantics are
# unchanged: floor division and modulo keep Python's rules (cdivision is off), and every
# counter fits in 64 bits for any run that fits in memory.
cimport cython
from kvsched.kvcache cimport KVCache, PrefixCachingKVCache
from kvsched.request cimport Request

cdef class DecodePool:
    cdef public KVCache _kv  # the loop builds a pool only over the two stock KV models
    cdef public Py_ssize_t _bs, _la, t, _joins, _sum_base
    cdef public bint _apc
    cdef public dict members, _adm, outside
    cdef public list _heap, _cnt, _max_heap, _min_heap, _spare
    cdef public tuple _range
    cdef public object outside_view

    @cython.locals(rid=object, c=Py_ssize_t, bs=Py_ssize_t, t=Py_ssize_t, base=Py_ssize_t, keyed=Py_ssize_t,
                   last=Py_ssize_t, end=Py_ssize_t, own=Py_ssize_t, kv=PrefixCachingKVCache)
    cpdef try_join(self, Request r)

    @cython.locals(t0=Py_ssize_t, k=Py_ssize_t, c0=Py_ssize_t, la=Py_ssize_t, bs=Py_ssize_t, base=Py_ssize_t,
                   c=Py_ssize_t, total=Py_ssize_t, need=Py_ssize_t, full=Py_ssize_t, done=Py_ssize_t,
                   j=Py_ssize_t, own=Py_ssize_t, mine=list, spare=list, given=list, ref=list, keys=list,
                   cached=dict, r=Request, kv=KVCache)
    cpdef leave(self, rid)

    @cython.locals(heap=list, members=dict, t_fin=Py_ssize_t, m=tuple)
    cpdef Py_ssize_t min_left(self) except? -1

    @cython.locals(members=dict, key=Py_ssize_t, m=tuple)
    cpdef Py_ssize_t _top(self, list heap) except? -1

    @cython.locals(cnt=list, bs=Py_ssize_t, t=Py_ssize_t, best=Py_ssize_t, q=Py_ssize_t, s=Py_ssize_t)
    cpdef Py_ssize_t min_slack(self) except? -1

    @cython.locals(cnt=list, bs=Py_ssize_t, t=Py_ssize_t, total=Py_ssize_t, q=Py_ssize_t, c=Py_ssize_t,
                   first=Py_ssize_t)
    cpdef Py_ssize_t new_blocks_over(self, Py_ssize_t k) except? -1

    @cython.locals(kv=KVCache)
    cpdef allocate(self, Py_ssize_t num_steps, Py_ssize_t num_new_blocks)

    @cython.locals(t=Py_ssize_t, heap=list, members=dict, done=list)
    cpdef advance(self, Py_ssize_t num_steps)  # a list, or () when no member is due
