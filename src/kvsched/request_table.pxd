# C types for kvsched/request_table.py in the compiled core (setup.py; docs/architecture.md,
# "Compiled core"). RequestTable stays a Python class (a Sequence); its per-request _pack reads
# the leaving Request's fields as C values (request.pxd).
cimport cython
from kvsched.request cimport Request

@cython.locals(attempts=list)
cpdef _pack(table, Py_ssize_t i, Request r)
