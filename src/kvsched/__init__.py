"""kvsched: scheduling LLM inference under KV-cache memory limits.

One loop (`kvsched.loop.run`) drives any registered scheduler against a backend
(the iteration-level simulator in `kvsched.sim`, later a real engine). Requests
come from `kvsched.traces`; results are summarised by `kvsched.metrics` and saved
by `kvsched.results`.
"""

from kvsched.compiled import select as _select_core

_select_core()  # before the first hot module is imported: compiled, or its .py (kvsched.compiled)

from kvsched.request import Request, RequestStatus

__version__ = "0.1.0"
__all__ = ["Request", "RequestStatus", "__version__"]
