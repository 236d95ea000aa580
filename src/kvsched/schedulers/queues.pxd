# C types for kvsched/schedulers/queues.py in the compiled core (setup.py; docs/architecture.md,
# "Compiled core"). FCFSQueue becomes a cdef class: vLLM's admission pass calls len(), peek() and
# pop() on it once per candidate, and a cdef class's __len__ is a C slot. PriorityQueue stays a
# Python class (its `add_front = add` alias is a class attribute).
cdef class FCFSQueue:
    cdef public object _q

    cpdef add(self, r)
    cpdef add_front(self, r)
    cpdef peek(self)
    cpdef pop(self)
