# C types for kvsched/request.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# Request becomes a cdef class with C-typed lengths and counters (Cython turns the @dataclass
# of a cdef class into its cython.dataclasses.dataclass, which generates the same __init__,
# __repr__ and fields). Cython's dataclass rejects `slots=True`, so the build drops that
# argument from the compiled copy (setup.py, compiled_copy): a cdef class has no __dict__
# anyway. Times and optional fields stay objects: None is a legal value of each. The fields are
# declared in the .py's order: Cython's dataclass takes its field order (__init__, repr) from here.

cdef class Request:
    cdef public Py_ssize_t request_id
    cdef public double arrival_time
    cdef public Py_ssize_t prompt_len
    cdef public Py_ssize_t output_len
    cdef public object predicted_output_len
    cdef public object predicted_output_interval
    cdef public object prefix_block_ids
    cdef public Py_ssize_t prefix_block_size
    cdef public Py_ssize_t num_computed_tokens
    cdef public Py_ssize_t num_output_tokens
    cdef public object status
    cdef public object admit_time
    cdef public object first_scheduled_time
    cdef public object first_token_time
    cdef public object finish_time
    cdef public Py_ssize_t num_preemptions
    cdef public Py_ssize_t num_restarts
    cdef public Py_ssize_t num_wasted_tokens
    cdef public Py_ssize_t num_discarded_tokens
    cdef public Py_ssize_t wasted_kv_area
    cdef public object attempt_start_step
    cdef public Py_ssize_t attempt_start_output
    cdef public Py_ssize_t attempt_kv_area
    cdef public list attempts
    cdef public object reject_reason
    cdef public Py_ssize_t num_cached_tokens
    cdef public Py_ssize_t num_reused_tokens
