# C types for kvsched/schedulers/vidur.py in the compiled core (setup.py; docs/architecture.md,
# "Compiled core"). The Vidur schedulers become cdef classes (registered after their classes, as
# schedulers/vllm.py's VLLMScheduler): their options and queues are C fields, the View and the
# decode pool are typed, and the per-step passes become cpdef with C-typed counters (`schedule`
# stays a def method, as in Scheduler). Requests stay untyped: a blind run hands them
# BlindRequests.
cimport cython
from kvsched.decision cimport Scheduler, View
from kvsched.pool cimport DecodePool

cdef class _VidurBase(Scheduler):
    cdef public Py_ssize_t batch_size_cap
    cdef public double watermark_fraction
    cdef public object _queue
    cdef public list _running

    @cython.locals(running=list, i=Py_ssize_t)
    cpdef _sync(self, View view)
    cpdef _admit(self, r)
    @cython.locals(watermark=Py_ssize_t)
    cpdef bint _fits_with_watermark(self, r, Py_ssize_t free, View view) except? -1
    cpdef tuple _restart_latest(self, View view, list preempted)

cdef class VidurVLLMScheduler(_VidurBase):
    cdef public Py_ssize_t max_tokens_in_batch

    @cython.locals(needs=dict, free=Py_ssize_t, need_all=Py_ssize_t, preempted=list, run=dict)
    cpdef _decode_pool(self, View view, DecodePool pool)

cdef class SarathiScheduler(_VidurBase):
    cdef public Py_ssize_t chunk_size

    @cython.locals(bs=Py_ssize_t, la=Py_ssize_t, cap=Py_ssize_t, partial=list, decoders=dict,
                   computed=Py_ssize_t, free=Py_ssize_t, need_all=Py_ssize_t, preempted=list, running=list,
                   freed=Py_ssize_t, run=dict, num_batch_tokens=Py_ssize_t, chunk_size=Py_ssize_t, n=Py_ssize_t,
                   num_members=Py_ssize_t, admitted=bint, steady=bint)
    cpdef _schedule_pool(self, View view, DecodePool pool)
    @cython.locals(bs=Py_ssize_t, la=Py_ssize_t, partial=list, free=Py_ssize_t, run=dict, preempted=list,
                   num_batch_tokens=Py_ssize_t, i=Py_ssize_t, computed=Py_ssize_t, need=Py_ssize_t,
                   freed=Py_ssize_t, n=Py_ssize_t, admitted=bint, steady=bint)
    cpdef _schedule_each(self, View view)
    @cython.locals(admitted=bint, cap=Py_ssize_t, bs=Py_ssize_t, la=Py_ssize_t, running=list, watermark=Py_ssize_t,
                   num_tokens=Py_ssize_t, n=Py_ssize_t)
    cpdef bint _admit_waiting(self, View view, dict run, Py_ssize_t num_batch_tokens, Py_ssize_t free,
                              Py_ssize_t num_members) except? -1
