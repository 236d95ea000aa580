# C types for kvsched/decision.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# View and Decision become cdef classes (frozen Cython dataclasses, C-typed counts): the compiled
# copy drops fast_frozen_init and slots=True from them, which a cdef class cannot take (Cython
# writes their __init__ in C). Scheduler becomes an empty cdef class so that VLLMScheduler can be
# one; every other scheduler stays a Python class.
# Fields in the .py's order (Cython's dataclass takes __init__'s order from here).
cdef class Decision:
    cdef readonly object run
    cdef readonly object preempt
    cdef readonly Py_ssize_t repeat
    cdef readonly object restart
    cdef readonly object idle_until
    cdef readonly bint pool

cdef class View:
    cdef readonly double now
    cdef readonly Py_ssize_t step
    cdef readonly object waiting
    cdef readonly object resident
    cdef readonly object arrived
    cdef readonly object finished
    cdef readonly Py_ssize_t num_free_blocks
    cdef readonly Py_ssize_t num_blocks
    cdef readonly Py_ssize_t block_size
    cdef readonly bint arrivals_pending
    cdef readonly object block_counts
    cdef readonly Py_ssize_t lookahead_tokens
    cdef readonly object prefix_cache
    cdef readonly object pool

cdef class Scheduler:
    pass
