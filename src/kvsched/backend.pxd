# C types for kvsched/backend.py in the compiled core (setup.py; docs/architecture.md, "Compiled core").
# BatchShape as a cdef class (a frozen Cython dataclass; the compiled copy drops fast_frozen_init
# and slots=True from it). The module's other dataclass stays a Python class.
cdef class BatchShape:
    cdef readonly Py_ssize_t num_seqs
    cdef readonly Py_ssize_t num_prefill_tokens
    cdef readonly Py_ssize_t num_decode_seqs
    cdef readonly Py_ssize_t num_kv_tokens
    cdef readonly Py_ssize_t prefill_attn_tokens
    cdef readonly Py_ssize_t max_decode_kv_len
    cdef readonly Py_ssize_t min_decode_kv_len
