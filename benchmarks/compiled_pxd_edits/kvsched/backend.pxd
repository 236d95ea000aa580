# EDITS=1 only (benchmarks/bench_compiled.sh): with source_edits.patch applied to the build's copy.
# BatchShape as a cdef class (frozen Cython dataclass; the patch drops fast_frozen_init, slots=True).
cdef class BatchShape:
    cdef readonly Py_ssize_t num_seqs
    cdef readonly Py_ssize_t num_prefill_tokens
    cdef readonly Py_ssize_t num_decode_seqs
    cdef readonly Py_ssize_t num_kv_tokens
    cdef readonly Py_ssize_t prefill_attn_tokens
    cdef readonly Py_ssize_t max_decode_kv_len
    cdef readonly Py_ssize_t min_decode_kv_len
