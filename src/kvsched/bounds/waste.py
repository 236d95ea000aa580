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

**Ranked form** (`ranked_waste_bound`). Count TEL epoch by epoch instead: `TEL = sum_t V(t)`,
`V(t)` the requests arrived before `t` and not finished before it, and
`M V(t) = V(t) (mem(t) + free(t))`. For `t` in the life of `i`, `V(t)` is at least
`w_i` (the requests finishing no earlier than `i`: `n + 1 - rank`) plus the breakpoints of `i`
at ages `>= t - p_i`, less the requests that arrive at `t` or later (`_ranked_weights`; none
when all arrive together). So a breakpoint at age `x` also costs the memory `i` held up to
it, `s x + x (x + 1) / 2`, once more, and every segment but the last its charge once more:
this is what stops small requests from funding the breakpoints of tall ones that finish
much later. With a price `mu` on the breakpoints' memory,
`M TEL >= sum_i F_i(w_i, mu)`, `F_i(w, mu) = w vol_i - mu cap_i + min_B [w waste(B) + ...]`,
and since the `w_i` are a permutation of `1..n` the least sum is an assignment problem
(`scipy.optimize.linear_sum_assignment`). The sum is concave in `mu`; a ternary search over
`mu = j / 16` finds its maximum. It costs O(n^2 o^2) per price, so it runs only up to
`RANKED_MAX_CELLS`, and by default only when all requests arrive together.

At the MC-SF paper's size good schedules run one or two requests at a time and about 40 % of
the memory-epochs stay free; this bound sees much of that where LB_vol, the LP relaxation
and the chains do not (docs/bounds.md has the measurements). `tests/test_chain.py` checks
both forms against brute force on random tiny instances.
"""

from __future__ import annotations

import numpy as np

from kvsched.bounds.instance import Instance
from kvsched.bounds.volume import request_volumes

PRICE_STEP = 1 / 16  # a power of two: prices times integers stay exact
MAX_PRICE = 8.0
RANKED_MAX_CELLS = 1e7  # the ranked form tabulates n^2 o^2 / 2 segment charges (80 MB at this limit)
RANKED_MAX_PRICE_STEPS = 4096  # mu = 0 .. 256 in steps of 1/16
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
    a, _, o = inst.arrays()
    _, _, g = request_terms(inst, prices, exact)
    best = np.cumsum(np.sort(g, axis=0), axis=0).max(axis=1)  # per k: max over prices
    by_volume = _ceil_div(best, inst.capacity)
    return np.maximum(int(a.min()) + by_volume, np.sort(a + o))


def request_terms(inst: Instance, prices: np.ndarray | None = None,
                  exact: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-rank form's terms: the prices `lam`, and per request `i` and price `lam[l]`
    the cheapest breakpoint set's cost `h[i, l]` and `g[i, l] = vol_i + h[i, l] - lam[l] cap_i`
    (module docstring; `exact` as in `waste_completion_bounds`)."""
    _, s, o = inst.arrays()
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
    return lam, h, g


def schedule_waste(inst: Instance, starts) -> tuple[np.ndarray, np.ndarray]:
    """What one schedule realises of the bound's terms, per request: the growth-waste charge
    (`sum l (l - 1) / 2` over the segments between its breakpoints) and the breakpoints'
    memory (`sum s + x`).

    The argument of the module docstring says that the free memory-epochs of the schedule's
    non-completion epochs are at least the charges' sum, and that the breakpoints one
    completion gives hold at most `M` less the peak of what completes there; the bound
    relaxes both. `benchmarks/waste_gap.py` compares them to what the bound assumes.
    """
    _, s, o = inst.arrays()
    start = np.asarray(starts, dtype=np.int64)
    done = start + o
    charge = np.zeros(inst.n, dtype=np.int64)
    memory = np.zeros(inst.n, dtype=np.int64)
    for i in range(inst.n):
        inside = done[(done > start[i]) & (done < done[i])]
        ages = np.unique(inside) - start[i]
        lengths = np.diff(np.concatenate([[0], ages, [o[i]]]))
        charge[i] = int((lengths * (lengths - 1) // 2).sum())
        memory[i] = int((s[i] + ages).sum())
    return charge, memory


def _ceil_div(values: np.ndarray, capacity: int) -> np.ndarray:
    """`ceil(values / capacity)` in integers: `ceil(ceil(16 v) / 16 M) = ceil(v / M)`.

    On the price grid `16 v` is an integer computed exactly. For prices off the grid the
    1e-6 makes float noise round down, never up, so the bound stays valid.
    """
    scale = round(1 / PRICE_STEP)
    scaled = np.ceil(values * scale - 1e-6).astype(np.int64)
    return -((-scaled) // (capacity * scale))


class _RankedCosts:
    """`F[c, k]` of the ranked form, for any breakpoint-memory price (`__call__`).

    `base[c, k, age - 1]` is the weight of an epoch at that age of a class-`c` request in
    weight column `k` (`V(t) >= base`), and `bonus[c, k, age - 1]` is 1 where every later
    breakpoint adds one to it, else 0. Shortest path over ages as in `_min_charges`: a
    segment costs `sum (end - age) * weight` over its ages, with `base + bonus` when it ends
    at a breakpoint and `base` when it ends at completion; a breakpoint at age `x` adds
    `sum_{age <= x} bonus (s + age) + price (s + x)`. The segment charges do not depend on
    the price, so they are tabulated once (`RANKED_MAX_CELLS` bounds their number).
    """

    def __init__(self, prompt_len: np.ndarray, output_len: np.ndarray, max_age: np.ndarray, capacity: int,
                 base: np.ndarray, bonus: np.ndarray) -> None:
        o_max = base.shape[2]
        ages = np.arange(1, o_max + 1, dtype=np.float64)

        def prefix(weight: np.ndarray) -> np.ndarray:  # [k]: sums over ages 1..k, k = 0..o_max; age first
            sums = np.cumsum(np.moveaxis(weight, 2, 0), axis=0)
            return np.concatenate([np.zeros((1, *sums.shape[1:])), sums])

        def charges(w0: np.ndarray, w1: np.ndarray, x: int) -> np.ndarray:
            # a segment from a breakpoint at y = 0..x-1 to x covers ages y+1..x-1, each weighted (x - age)
            return x * (w0[x - 1] - w0[:x]) - (w1[x - 1] - w1[:x])

        self.prompt_len, self.output_len, self.max_age = prompt_len, output_len, max_age
        self.o_max = o_max
        h0, h1 = prefix(base + bonus), prefix((base + bonus) * ages)
        b0, b1 = prefix(base), prefix(base * ages)
        self.to_breakpoint = [None] + [charges(h0, h1, x) for x in range(1, o_max)]
        self.to_end = {x: charges(b0, b1, x)[:, output_len == x] for x in np.unique(output_len).tolist()}
        self.held = prefix(bonus * (prompt_len[:, None, None] + ages))
        self.fixed = (base * (prompt_len[:, None, None] + ages)).sum(axis=2)  # volume; ages past o weigh 0
        self.cap = capacity - prompt_len - output_len

    def __call__(self, price: float) -> np.ndarray:
        o = self.output_len
        dp = np.full((self.o_max + 1, *self.fixed.shape), np.inf)
        dp[0] = 0.0
        out = np.empty(self.fixed.shape)
        for x in range(1, self.o_max + 1):
            ends = o == x
            if ends.any():
                out[ends] = (dp[:x, ends] + self.to_end[x]).min(axis=0)
            allowed = (x < o) & (x <= self.max_age)
            if allowed.any():
                step = (dp[:x] + self.to_breakpoint[x]).min(axis=0) + self.held[x]
                step += (price * (self.prompt_len + x))[:, None]
                dp[x] = np.where(allowed[:, None], step, np.inf)
        return out + self.fixed - (price * self.cap)[:, None]


def _ranked_weights(inst: Instance, classes: np.ndarray, rank_done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`base`, `bonus` of `_RankedCosts` for classes `(a, s, o)` and columns `w = 1..n`.

    For a request of weight `w` (`n + 1 - rank`) at age `age`, `V(t)` counts the `w`
    requests finishing no earlier, less those that arrive at `t` or later, at most
    `N(p + age)` with `N(tau)` the requests arriving at `tau` or later; plus one per later
    breakpoint, less the same arrivals (counted once). So `V(t) >= max(1, w - N + later
    breakpoints) >= base + bonus * later breakpoints` with `base = max(1, w - N)` and
    `bonus = [w - N >= 1]`. The start `p` is at least the arrival and at least the rank's
    completion bound (`waste_completion_bounds`) minus `o`.
    """
    a, _, _ = inst.arrays()
    n = inst.n
    ca, co = classes[0], classes[2]
    o_max = int(co.max())
    arrivals = np.sort(a)
    w = np.arange(1, n + 1)
    # rank r (1-based) completes no earlier than rank_done[r - 1]
    start = np.maximum(ca[:, None], rank_done[::-1][None, :] - co[:, None])  # column w: rank n + 1 - w
    tau = start[:, :, None] + np.arange(1, o_max + 1)
    later = n - np.searchsorted(arrivals, tau, side="left")  # arrivals at tau or later
    excess = w[None, :, None] - later
    alive = np.arange(1, o_max + 1)[None, None, :] <= co[:, None, None]
    base = np.where(alive, np.maximum(1, excess), 0).astype(np.float64)
    bonus = np.where(alive & (excess >= 1), 1.0, 0.0)
    return base, bonus


def ranked_waste_bound(inst: Instance, rank_done: np.ndarray | None = None) -> int | None:
    """The ranked form (module docstring); None when its tables would exceed `RANKED_MAX_CELLS`.

    `rank_done`: `waste_completion_bounds(inst)` when the caller has it already.
    """
    from scipy.optimize import linear_sum_assignment

    a, s, o = inst.arrays()
    if inst.n == 0 or float(inst.n) ** 2 * float(o.max()) ** 2 / 2 > RANKED_MAX_CELLS:
        return None
    classes, inverse = np.unique(np.stack([a, s, o]), axis=1, return_inverse=True)
    cs = classes[1].astype(np.float64)
    max_age = inst.capacity - classes[1] - int((s + o).min())
    if rank_done is None:
        rank_done = waste_completion_bounds(inst)
    costs_at = _RankedCosts(cs, classes[2], max_age, inst.capacity, *_ranked_weights(inst, classes, rank_done))
    inverse = inverse.ravel()
    cache: dict[int, float] = {}

    def value(step: int) -> float:  # the least assignment at mu = step / 16; exact on the grid
        if step not in cache:
            costs = costs_at(step * PRICE_STEP)[inverse]
            rows, cols = linear_sum_assignment(costs)
            cache[step] = float(costs[rows, cols].sum())
        return cache[step]

    lo, hi = 0, RANKED_MAX_PRICE_STEPS
    while hi - lo > 2:  # concave in mu: ternary search over the grid
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if value(m1) < value(m2):
            lo = m1
        elif value(m1) > value(m2):
            hi = m2
        else:
            lo, hi = m1, m2
    best = max(value(step) for step in range(lo, hi + 1))
    return int(_ceil_div(np.array([best]), inst.capacity)[0])  # M TEL >= best


def waste_bound(inst: Instance, prices: np.ndarray | None = None, exact: bool | None = None,
                ranked: bool | None = None) -> int:
    """The growth-waste lower bound on the optimal TEL (module docstring); at least LB_vol.

    The larger of the per-rank form and the ranked form. `ranked=None` computes the ranked
    form only when every request arrives at the same epoch: with arrivals spread over time
    its weights lose the later arrivals and it is rarely stronger (docs/bounds.md), at up to
    seconds per instance. True forces it, False skips it.
    """
    if inst.n == 0:
        return 0
    a, _, _ = inst.arrays()
    rank_done = waste_completion_bounds(inst, prices, exact)
    per_rank = int(rank_done.sum() - a.sum())
    if ranked is None:
        ranked = bool(np.all(a == a[0]))
    together = ranked_waste_bound(inst, rank_done) if ranked else None
    return per_rank if together is None else max(per_rank, together)
