# C types for kvsched/loop.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# _Loop becomes a cdef class with C-typed clock and counters and a DecodePool-typed pool (its
# cpdef methods and attributes are then reached without a Python call or lookup); the per-step
# methods, _apply among them, become cpdef with C-typed locals. OnlineLoop stays a Python
# subclass (it overrides _finish_step, which cpdef dispatch honours). Request locals are typed
# (request.pxd), the step's shape is a BatchShape (backend.pxd) and the scheduler's decision a
# Decision (decision.pxd: a scheduler that returns anything else fails with a TypeError naming
# both types). `kv` is typed KVCache: every KV model handed to the loop in this repository is
# one (the engine's too; the tests' checking models subclass it).
cimport cython
from kvsched.pool cimport DecodePool
from kvsched.request cimport Request
from kvsched.kvcache cimport KVCache
from kvsched.backend cimport BatchShape
from kvsched.decision cimport Decision

cdef class _Loop:
    cdef public list reqs, arrived, finished
    cdef public KVCache kv
    cdef public object scheduler, backend, progress, max_steps, hits, steps, table, _decode_time
    cdef public object blocks_view, waiting_view, resident_view, wrap, _proxies
    cdef public Py_ssize_t progress_every, lookahead, step_index, next_arrival, num_done, num_admissions
    cdef public bint apc, blind, accepting
    cdef public dict waiting, resident, _index
    cdef public double now
    cdef public DecodePool pool
    cdef public object _steady
    cdef public Py_ssize_t _steady_version
    cdef public bint _reuse_steady, _steady_waiting, _steady_past_arrivals

    @cython.locals(n_total=Py_ssize_t, last_report=Py_ssize_t, reqs=list, eps=double, i=Py_ssize_t)
    cpdef run(self)

    @cython.locals(arrived=list, finished=list, kv=KVCache, decision=Decision)
    cpdef _schedule_and_apply(self)

    @cython.locals(reqs=list, i=Py_ssize_t, n=Py_ssize_t, index=dict, waiting=dict, arrived=list,
                   la=Py_ssize_t, bs=Py_ssize_t, num_blocks=Py_ssize_t, r=Request, kv=KVCache)
    cpdef _admit_arrivals(self)

    cpdef _pack(self, r)

    @cython.locals(pool=DecodePool, members=Py_ssize_t, inside=dict, new_blocks=Py_ssize_t,
                   min_slack=Py_ssize_t, min_left=Py_ssize_t, pool_blocks=Py_ssize_t, num_steps=Py_ssize_t,
                   longest=Py_ssize_t, shortest=Py_ssize_t, duration=double, kv_seconds=double,
                   bs=Py_ssize_t, need=Py_ssize_t, total=Py_ssize_t, kv=KVCache, used=Py_ssize_t)
    cpdef _apply(self, Decision decision)

    @cython.locals(bs=Py_ssize_t, la=Py_ssize_t, blocks=dict, resident=dict, waiting=dict, batch=list,
                   totals=list, num_prefill=Py_ssize_t, num_decode=Py_ssize_t, num_kv=Py_ssize_t,
                   attn=Py_ssize_t, new_blocks=Py_ssize_t, max_dec=Py_ssize_t, min_slack=Py_ssize_t,
                   min_left=Py_ssize_t, min_dec=Py_ssize_t, computed=Py_ssize_t, out=Py_ssize_t,
                   remaining=Py_ssize_t, n=Py_ssize_t, total=Py_ssize_t, held=Py_ssize_t, need=Py_ssize_t,
                   pool=DecodePool, longest=Py_ssize_t, shortest=Py_ssize_t, r=Request)
    cpdef tuple _validate(self, runs, Py_ssize_t members=*)

    @cython.locals(now=double, start=double, end=double, la=Py_ssize_t, pool=DecodePool,
                   used_tokens=Py_ssize_t, used_blocks=Py_ssize_t, num_finished=Py_ssize_t, n=Py_ssize_t,
                   caught_up=bint, r=Request, kv=KVCache)
    cpdef _finish_step(self, batch, BatchShape shape, Py_ssize_t num_steps, double duration, Py_ssize_t num_preempted,
                       double kv_seconds, Py_ssize_t members=*)

    @cython.locals(kv=KVCache, pool=DecodePool, num_finished=Py_ssize_t, r=Request)
    cpdef Py_ssize_t _finish_members(self, Py_ssize_t num_steps, double end) except? -1

    cpdef _record_row(self, tuple row, double start, double duration, double kv_seconds, Py_ssize_t num_steps)
