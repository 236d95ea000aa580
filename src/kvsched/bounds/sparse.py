"""The hindsight IP in cumulative-start variables: the same LP, O(1) nonzeros per (request, epoch).

In the start formulation (`kvsched.bounds.model`) the column "class `c` starts at `p`"
has a nonzero `s_c + t - p` in every memory row `t = p+1..p+o_c`, so the matrix has
`sum_c (#starts) o_c` nonzeros (a million at the papers' size). Here the variables are

* `z_{c,t}` = number of class-`c` requests started at epochs `<= t`, for `t = a_c..H_c`,
  integer, `z_{c,H_c} = n_c` (so `x_{c,p} = z_{c,p} - z_{c,p-1} >= 0` is the start count);
  below `a_c` it is 0 and past `H_c` it stays `n_c` (the column of `H_c` stands in);
* `w_{c,t} = sum_{j=1..o_c} z_{c,t-j}`, continuous, for `t = a_c+1..H_c+o_c`, defined by
  `w_{c,t} - w_{c,t-1} - z_{c,t-1} + z_{c,t-1-o_c} = 0` (and `w_{c,a_c} = 0`).

The memory class `c` holds at epoch `t` is `sum_{j=1..o} x_{t-j} (s + j)`; summation by
parts gives `sum_j j x_{t-j} = w_t - o z_{t-1-o}` and `sum_j x_{t-j} = z_{t-1} - z_{t-1-o}`, so

    memory_t = sum_c  s_c z_{c,t-1} + w_{c,t} - (s_c + o_c) z_{c,t-1-o_c}  <=  M,

three nonzeros per class. The objective `sum_p p x_p = H z_H - sum_{p<H} z_p`. The map
`x -> (z, w)` is linear and invertible on the feasible set, so the LP value and the IP
optimum equal the start formulation's (`tests/test_sparse.py` checks both). Every cut of the
start formulation that counts requests alive in an age window `[j0, j1]` at epoch `t` is
`z_{t-j0} - z_{t-j1-1}`: two nonzeros (threshold, cardinality, chain rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.bounds.chain import ChainFamily
from kvsched.bounds.instance import Instance


def build_sparse_model(
    inst: Instance,
    horizon: np.ndarray,
    *,
    aggregate: bool = True,
    cardinality_cuts: bool = False,
    threshold_cuts: int = 0,
    symmetry_cuts: bool = False,
    objective_lower_bound: int | None = None,
    chain_families: Sequence[ChainFamily] = (),
):
    """`kvsched.bounds.model.build_model(..., formulation="sparse")`; same arguments."""
    from scipy.sparse import coo_matrix

    from kvsched.bounds.model import TimeIndexedModel, class_arrays, max_alive

    classes, size, ca, cs, co, ch = class_arrays(inst, horizon, aggregate)
    n_cls = len(classes)
    nz = ch - ca + 1
    z_first = np.concatenate([[0], np.cumsum(nz)]).astype(np.int64)
    n_z = int(z_first[-1])
    nw = ch + co - ca  # w_t for t = a+1..H+o
    w_first = n_z + np.concatenate([[0], np.cumsum(nw)]).astype(np.int64)
    num_vars = int(w_first[-1])
    n_epochs = int((ch + co).max()) if n_cls else 0

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []
    kinds: dict[str, int] = {}

    def zcol(c: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns of z_{c,t} for epochs t, and a mask of those that are not identically 0."""
        ok = t >= ca[c]
        return z_first[c] + np.minimum(t, ch[c]) - ca[c], ok

    def add(r: np.ndarray, cidx: np.ndarray, v: np.ndarray) -> None:
        rows.append(np.asarray(r, dtype=np.int64))
        cols.append(np.asarray(cidx, dtype=np.int64))
        vals.append(np.asarray(v, dtype=np.float64))

    def new_rows(kind: str, count: int, lo: float, hi: float) -> int:
        base = len(lower)
        lower.extend([lo] * count)
        upper.extend([hi] * count)
        kinds[kind] = kinds.get(kind, 0) + count
        return base

    # Monotone: z_{c,t} - z_{c,t-1} >= 0, t = a+1..H.
    for c in range(n_cls):
        m = int(nz[c]) - 1
        if m <= 0:
            continue
        base = new_rows("monotone", m, 0.0, np.inf)
        r = base + np.arange(m)
        add(np.concatenate([r, r]), np.concatenate([z_first[c] + 1 + np.arange(m), z_first[c] + np.arange(m)]),
            np.concatenate([np.ones(m), -np.ones(m)]))
    # Running sums: w_t - w_{t-1} - z_{t-1} + z_{t-1-o} = 0, t = a+1..H+o.
    for c in range(n_cls):
        m = int(nw[c])
        base = new_rows("running-sum", m, 0.0, 0.0)
        t = ca[c] + 1 + np.arange(m)
        r = base + np.arange(m)
        add(r, w_first[c] + np.arange(m), np.ones(m))
        add(r[1:], w_first[c] + np.arange(m - 1), -np.ones(m - 1))
        zc, ok = zcol(c, t - 1)
        add(r[ok], zc[ok], -np.ones(int(ok.sum())))
        zc, ok = zcol(c, t - 1 - co[c])
        add(r[ok], zc[ok], np.ones(int(ok.sum())))

    def epoch_rows(kind: str, hi: float) -> int:
        return new_rows(kind, n_epochs, -np.inf, hi)

    def window(base: int, c: int, j0: int, j1: int) -> None:
        """+1 per class-c request alive at ages j0..j1 at each epoch t: z_{t-j0} - z_{t-j1-1}."""
        t = np.arange(ca[c] + j0, ch[c] + j1 + 1)
        zc, ok = zcol(c, t - j0)
        add(base + t[ok] - 1, zc[ok], np.ones(int(ok.sum())))
        zc, ok = zcol(c, t - j1 - 1)
        add(base + t[ok] - 1, zc[ok], -np.ones(int(ok.sum())))

    mem_base = epoch_rows("memory", float(inst.capacity))
    for c in range(n_cls):
        t = ca[c] + 1 + np.arange(int(nw[c]))
        zc, ok = zcol(c, t - 1)
        add(mem_base + t[ok] - 1, zc[ok], np.full(int(ok.sum()), float(cs[c])))
        add(mem_base + t - 1, w_first[c] + np.arange(int(nw[c])), np.ones(t.size))
        zc, ok = zcol(c, t - 1 - co[c])
        add(mem_base + t[ok] - 1, zc[ok], np.full(int(ok.sum()), -float(cs[c] + co[c])))
    if cardinality_cuts:
        base = epoch_rows("cardinality", float(max_alive(inst)))
        for c in range(n_cls):
            window(base, c, 1, int(co[c]))
    for q in range(1, threshold_cuts + 1):
        theta = inst.capacity // (q + 1) + 1
        base = epoch_rows("threshold", float(q))
        for c in range(n_cls):
            j0 = max(1, int(theta - cs[c]))
            if j0 <= co[c]:
                window(base, c, j0, int(co[c]))
    for fam in chain_families:
        tails = dict(zip(fam.members, fam.tail_len, strict=True))
        base = epoch_rows("chain", 1.0)
        for c in range(n_cls):
            h = tails.get(classes[c][0], 0)
            if h:
                window(base, c, int(co[c]) - h + 1, int(co[c]))

    # Objective: sum_p p x_p = H z_H - sum_{p<H} z_p, per class.
    cost = np.zeros(num_vars)
    for c in range(n_cls):
        cost[z_first[c] : z_first[c + 1] - 1] = -1.0
        cost[z_first[c + 1] - 1] = float(ch[c])
    a, _, o = inst.arrays()
    offset = float((o - a).sum())
    if symmetry_cuts and not aggregate:
        # p_i <= p_j for consecutive identical requests  <=>  z_i(t) >= z_j(t) for every t.
        last_of: dict[tuple[int, int, int], int] = {}
        for c in sorted(range(n_cls), key=lambda c: inst.request_ids[classes[c][0]]):
            key = (int(ca[c]), int(cs[c]), int(co[c]))
            if key in last_of:
                prev = last_of[key]
                t = np.arange(ca[c], min(ch[c], ch[prev]))
                if t.size:
                    base = new_rows("ordering", t.size, 0.0, np.inf)
                    r = base + np.arange(t.size)
                    add(r, zcol(prev, t)[0], np.ones(t.size))
                    add(r, zcol(c, t)[0], -np.ones(t.size))
            last_of[key] = c
    if objective_lower_bound is not None:
        base = new_rows("objective-cut", 1, float(objective_lower_bound) - offset, np.inf)
        nzc = np.flatnonzero(cost)
        add(np.full(nzc.size, base), nzc, cost[nzc])

    n_rows_full = len(lower)
    mat = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows_full, num_vars)
    ).tocsr()
    mat.sum_duplicates()
    mat.eliminate_zeros()  # z past the horizon cancels in windows that lie wholly beyond it
    used = np.diff(mat.indptr) > 0
    mat = mat[used].tocsc()
    mat.sort_indices()
    row_lower = np.asarray(lower)[used]
    row_upper = np.asarray(upper)[used]
    row_epoch = np.zeros(n_rows_full, dtype=np.int64)
    row_epoch[mem_base : mem_base + n_epochs] = np.arange(1, n_epochs + 1)
    kept: dict[str, int] = {}
    start = 0
    for kind, count in kinds.items():
        kept[kind] = int(used[start : start + count].sum())
        start += count

    col_lower = np.zeros(num_vars)
    col_upper = np.full(num_vars, np.inf)
    col_class = np.empty(n_z, dtype=np.int64)
    col_time = np.empty(n_z, dtype=np.int64)
    aux_class = np.empty(num_vars - n_z, dtype=np.int64)
    aux_time = np.empty(num_vars - n_z, dtype=np.int64)
    for c in range(n_cls):
        lo, hi = int(z_first[c]), int(z_first[c + 1])
        col_upper[lo:hi] = size[c]
        col_lower[hi - 1] = size[c]  # every request has started by its horizon
        col_class[lo:hi] = c
        col_time[lo:hi] = ca[c] + np.arange(hi - lo)
        wl, wh = int(w_first[c]) - n_z, int(w_first[c + 1]) - n_z
        aux_class[wl:wh] = c
        aux_time[wl:wh] = ca[c] + 1 + np.arange(wh - wl)
    return TimeIndexedModel(
        cost=cost,
        offset=offset,
        col_lower=col_lower,
        col_upper=col_upper,
        a_start=mat.indptr.astype(np.int32),
        a_index=mat.indices.astype(np.int32),
        a_value=mat.data.astype(np.float64),
        row_lower=row_lower,
        row_upper=row_upper,
        col_class=col_class,
        col_time=col_time,
        class_members=classes,
        class_horizon=ch,
        class_first_col=z_first,
        row_counts=kept,
        memory_row_epoch=row_epoch[used],
        cumulative=True,
        aux_class=aux_class,
        aux_time=aux_time,
        class_output_len=co,
        integer_vars=n_z,
    )
