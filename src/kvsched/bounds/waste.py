"""The growth-waste bound: memory must sit free before every completion.

The model is the MC-SF paper's hindsight IP: a request started at `p` holds `s + x` tokens
at epoch `p + x`, `x = 1..o`, and completes at `C = p + o` holding its peak `s + o`.
LB_vol (`kvsched.bounds.volume`) assumes every epoch can be filled to `M`. Running requests
grow, so it cannot:

**Free memory before a completion.** Take an epoch `t` at which no request completes, let
`d` be the epochs until the next completion and `r` the number of requests running at `t`.
All `r` still run at `t + d`, each `d` tokens bigger, so the memory at `t` is at most
`M - r d`. Charge the `d` to each running request. A request `i` whose life `p_i+1..C_i`
holds the completion epochs of others at ages `x_1 < ... < x_q` (its *breakpoints*) is
charged, on the `q + 1` segments between `0, x_1, ..., x_q, o_i` of lengths `l`,
`sum l (l - 1) / 2` (an epoch `e` before a segment's end is charged `e`; breakpoints
themselves are charged nothing).

**Breakpoints cost memory.** At the completion epoch of `j`, `j` holds `s_j + o_j`, so the
requests continuing past it hold at most `cap_j = M - s_j - o_j` together, and `i` at age `x`
holds `s_i + x`. So the breakpoints that `j`'s completion gives cost at most `cap_j` in all,
and one at age `x` needs `s_i + x <= M - min peak`.

**The bound.** The `k` requests `S` that complete first ran within `(a_min, C_(k)]`, and
every breakpoint in their lives is the completion of a member of `S`. So
`M (C_(k) - a_min) >= sum_S vol_i + sum_S waste_i` with `sum_S breakpoint memory <= sum_S cap_j`.
With a price `lam >= 0` on that memory (Lagrangian relaxation),
`waste_i + lam * (memory of i's breakpoints) >= h_i(lam)`, the cheapest breakpoint set (a
shortest path over ages, `_min_charges`), so
`M (C_(k) - a_min) >= sum_S g_i(lam) >= ` the sum of the `k` smallest
`g_i(lam) = vol_i + h_i(lam) - lam cap_i`, for every `lam`. At `lam = 0` this is LB_vol's
`P_k` (breakpoints at every age cost nothing). The bound is
`sum_k max(a_min + ceil(max_lam (sum of k smallest g) / M), E_(k)) - sum a`, `E_(k)` the
`k`-th smallest `a + o`, as in LB_vol; the prices are the grid `j / 16`, `j = 0..16 * 8`, so
every sum is exact in binary floating point and the ceiling is taken in integers.

At the MC-SF paper's size the good schedules run 1-2 requests at a time and a quarter to a
third of the memory-epochs stay free; this bound sees much of that where LB_vol, the LP
relaxation and the chains do not (docs/bounds.md has the measurements).
`tests/test_waste.py` checks it against brute force on random tiny instances.
"""

from __future__ import annotations

import numpy as np

from kvsched.bounds.instance import Instance
from kvsched.bounds.volume import request_volumes

PRICE_STEP = 1 / 16  # a power of two: prices times integers stay exact
MAX_PRICE = 8.0
# Above this many array cells (sum over ages x of x * classes * prices) the exact shortest path
# gives way to `_min_charges_relaxed`. Paper-size instances need about 4e7.
EXACT_WORK_LIMIT = 3e8


def price_grid(step: float = PRICE_STEP, max_price: float = MAX_PRICE) -> np.ndarray:
    """The prices tried: `0, step, ..., max_price`."""
    return np.arange(round(max_price / step) + 1) * step


def _min_charges(prompt_len: np.ndarray, output_len: np.ndarray, max_age: np.ndarray,
                 prices: np.ndarray) -> np.ndarray:
    """`h[c, l]`: the cheapest breakpoint set of class `c` at price `prices[l]`.

    Breakpoints are ages `1 <= x < o_c` with `x <= max_age[c]`; a set costs the segments'
    `sum l (l - 1) / 2` plus `price * (s_c + x)` per breakpoint. Shortest path over ages,
    all classes and prices at once: `dp[x]` is the cheapest cost of ages `0..x` with a
    breakpoint at `x`.
    """
    num_classes, o_max = len(output_len), int(output_len.max())
    dp = np.full((o_max + 1, num_classes, len(prices)), np.inf)
    dp[0] = 0.0
    out = np.empty((num_classes, len(prices)))
    for x in range(1, o_max + 1):
        seg = np.arange(x, 0, -1)  # segment lengths from a breakpoint at y = 0..x-1
        best = (dp[:x] + (seg * (seg - 1) / 2)[:, None, None]).min(axis=0)
        allowed = (x < output_len) & (x <= max_age)
        dp[x] = np.where(allowed[:, None], best + np.outer(prompt_len + x, prices), np.inf)
        ends = output_len == x
        out[ends] = best[ends]
    return out


def _min_charges_relaxed(prompt_len: np.ndarray, output_len: np.ndarray, max_age: np.ndarray,
                         prices: np.ndarray) -> np.ndarray:
    """A lower bound on `_min_charges` in O(o) per class and price, for long outputs.

    Any set of `q` breakpoints costs at least the even split of `o` into `q + 1` segments
    plus the `q` cheapest ages' memory, `sum_{x=1..q} (s + x)`; take the least over `q`.
    """
    out = np.empty((len(output_len), len(prices)))
    for c, (s, o, top) in enumerate(zip(prompt_len.tolist(), output_len.tolist(), max_age.tolist(), strict=True)):
        q = np.arange(max(0, min(o - 1, top)) + 1)
        base, extra = np.divmod(o, q + 1)
        split = extra * (base + 1) * base / 2 + (q + 1 - extra) * base * (base - 1) / 2
        memory = q * s + q * (q + 1) / 2
        out[c] = (split[:, None] + np.outer(memory, prices)).min(axis=0)
    return out


def waste_completion_bounds(inst: Instance, prices: np.ndarray | None = None,
                            exact: bool | None = None) -> np.ndarray:
    """Lower bounds on the `k`-th smallest completion epoch of every schedule, `k = 1..n`.

    `exact` picks the shortest path over ages (True) or its O(o) relaxation (False); None
    picks the exact one unless it would exceed `EXACT_WORK_LIMIT` cells (outputs of
    thousands of tokens).
    """
    if inst.n == 0:
        return np.zeros(0, dtype=np.int64)
    a, s, o = inst.arrays()
    capacity = inst.capacity
    lam = price_grid() if prices is None else np.asarray(prices, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or lam.min() < 0:
        raise ValueError("prices must be a non-empty 1-D array of finite values >= 0")
    peak = s + o
    classes, inverse = np.unique(np.stack([s, o]), axis=1, return_inverse=True)
    cs, co = classes[0], classes[1]
    max_age = capacity - cs - int(peak.min())
    if exact is None:
        exact = float(co.max()) ** 2 / 2 * len(co) * lam.size <= EXACT_WORK_LIMIT
    charges = _min_charges if exact else _min_charges_relaxed
    h = charges(cs, co, max_age, lam)[inverse.ravel()]  # per request
    g = request_volumes(s, o)[:, None] + h - np.outer(capacity - peak, lam)
    best = np.cumsum(np.sort(g, axis=0), axis=0).max(axis=1)  # per k: max over prices
    a_min = int(a.min())
    by_volume = _ceil_div(best, capacity)
    return np.maximum(a_min + by_volume, np.sort(a + o))


def _ceil_div(values: np.ndarray, capacity: int) -> np.ndarray:
    """`ceil(values / capacity)` in integers: `ceil(ceil(16 v) / 16 M) = ceil(v / M)`.

    On the price grid `16 v` is an integer computed exactly. For prices off the grid the
    1e-6 makes float noise round down, never up, so the bound stays valid.
    """
    scale = round(1 / PRICE_STEP)
    scaled = np.ceil(values * scale - 1e-6).astype(np.int64)
    return -((-scaled) // (capacity * scale))


def waste_bound(inst: Instance, prices: np.ndarray | None = None, exact: bool | None = None) -> int:
    """The growth-waste lower bound on the optimal TEL (module docstring); at least LB_vol."""
    if inst.n == 0:
        return 0
    a, _, _ = inst.arrays()
    return int(waste_completion_bounds(inst, prices, exact).sum() - a.sum())
