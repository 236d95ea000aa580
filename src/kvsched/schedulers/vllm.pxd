# C types for kvsched/schedulers/vllm.py in the compiled core (setup.py; docs/architecture.md,
# "Compiled core"). VLLMScheduler becomes a cdef class (registered after its class: a cdef class
# takes no decorator but @dataclass; _waiting is declared as a field: every declared attribute of
# a Cython dataclass is one). Its instances take no new attributes: wrap one (schedulers/proxy.py) rather than patch it.
# Its per-step passes become cpdef with C-typed locals; the hooks Python subclasses override
# (_can_admit, _admitted, _left, _make_queue) and _pick_victim (a lambda, a closure) stay def
# methods. Requests stay untyped here: a blind run hands it BlindRequests.
cimport cython
from kvsched.decision cimport Scheduler, View
from kvsched.pool cimport DecodePool

cdef class VLLMScheduler(Scheduler):
    cdef public Py_ssize_t max_num_batched_tokens
    cdef public Py_ssize_t max_num_seqs
    cdef public bint enable_chunked_prefill
    cdef public Py_ssize_t long_prefill_token_threshold
    cdef public object policy
    cdef public object preemption
    cdef public bint reserve_full_sequence
    cdef public bint threshold_needs_two
    cdef public bint enable_prefix_caching
    cdef public dict _running
    cdef public object _waiting

    @cython.locals(outside=object, running=dict, num_members=Py_ssize_t, budget=Py_ssize_t, free=Py_ssize_t,
                   tail=list, run=dict, needs=dict, steady=bint, bs=Py_ssize_t, la=Py_ssize_t,
                   need_all=Py_ssize_t, n=Py_ssize_t, need=Py_ssize_t, preempted=list)
    cpdef _schedule_pool(self, View view, DecodePool pool, Py_ssize_t threshold)

    @cython.locals(budget=Py_ssize_t, free=Py_ssize_t, run=dict, needs=dict, preempted=list, by_id=dict,
                   running=list, steady=bint, i=Py_ssize_t, bs=Py_ssize_t, la=Py_ssize_t, n=Py_ssize_t,
                   need=Py_ssize_t, self_preempted=bint, admitted=bint)
    cpdef _schedule_each(self, View view, Py_ssize_t threshold)

    @cython.locals(admitted=bint, running=dict, bs=Py_ssize_t, la=Py_ssize_t, fresh=bint, hit=Py_ssize_t,
                   evictable=Py_ssize_t, num_tokens=Py_ssize_t, n=Py_ssize_t, need=Py_ssize_t)
    cpdef bint _admit(self, View view, dict run, Py_ssize_t budget, Py_ssize_t free, Py_ssize_t threshold) except? -1
