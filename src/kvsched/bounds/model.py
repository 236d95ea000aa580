"""The time-indexed hindsight model of the MC-SF paper's hindsight IP, built once as a sparse column-wise matrix.

One builder serves the IP, its LP relaxation and every option:

* **classes**: with `aggregate=True` requests with identical `(a, s, o)` share one
  integer column per epoch, `y_{c,t} in {0..n_c}` with `sum_t y_{c,t} = n_c` (the memory
  rows keep their coefficients); otherwise every request is its own class of size 1.
* **per-class horizons**: the last start epoch each class may use (computed by
  `kvsched.bounds.ip`, which knows whether they are safe, valid or heuristic).
* **optional cuts**: threshold rows (for q = 1..Q, at most q requests alive whose
  footprint is at least M//(q+1)+1), cardinality rows (at most `K` requests alive at an
  epoch), an objective cut (objective >= a known lower bound) and ordering rows between
  identical requests when not aggregated.

Rows are laid out as [assignment | memory by epoch | cardinality by epoch | threshold q=1
by epoch | ... | extras], and
each column lists its nonzeros in that order, so the compressed-sparse-column arrays
come straight out of numpy reshapes (no Python loop over nonzeros). Empty rows are
removed at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvsched.bounds.chain import ChainFamily
from kvsched.bounds.instance import Instance


@dataclass(frozen=True, slots=True)
class TimeIndexedModel:
    """`min c x + offset  s.t.  row_lower <= A x <= row_upper, col_lower <= x <= col_upper`.

    `A` is column-wise: column `j` has row indices `a_index[a_start[j]:a_start[j+1]]`.
    Column `j` is "`col_count` requests of class `col_class[j]` start at `col_time[j]`".
    """

    cost: np.ndarray
    offset: float
    col_lower: np.ndarray
    col_upper: np.ndarray
    a_start: np.ndarray  # int32, length num_vars + 1
    a_index: np.ndarray  # int32
    a_value: np.ndarray  # float64
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_class: np.ndarray  # class of each column
    col_time: np.ndarray  # start epoch of each column
    class_members: tuple[tuple[int, ...], ...]  # request indices per class, in request-id order
    class_horizon: np.ndarray  # last start epoch per class
    class_first_col: np.ndarray  # first column of each class (length num_classes + 1)
    row_counts: dict[str, int]  # rows kept per kind, after empty rows are removed
    # Epoch (>= 1) of each kept row that is a memory row, 0 for every other row: where the
    # LP's memory duals become Lagrangian prices (`kvsched.bounds.certify`).
    memory_row_epoch: np.ndarray | None = None
    # Sparse formulation (`kvsched.bounds.sparse`): the class columns hold cumulative starts
    # z_{c,t} = #starts at epochs <= t, and columns past class_first_col[-1] are running sums
    # w_{c,t} = sum_{j=1..o_c} z_{c,t-j} (class `aux_class`, epoch `aux_time`).
    cumulative: bool = False
    aux_class: np.ndarray | None = None
    aux_time: np.ndarray | None = None
    class_output_len: np.ndarray | None = None
    integer_vars: int | None = None  # the first this many columns are integer (None: all)

    @property
    def num_vars(self) -> int:
        return int(self.cost.size)

    @property
    def num_rows(self) -> int:
        return int(self.row_lower.size)

    @property
    def num_nonzeros(self) -> int:
        return int(self.a_value.size)

    # ------------------------------------------------------------------ mapping
    def class_of_request(self) -> np.ndarray:
        n = sum(len(m) for m in self.class_members)
        out = np.empty(n, dtype=np.int64)
        for c, members in enumerate(self.class_members):
            out[list(members)] = c
        return out

    def vector_from_starts(self, starts: tuple[int, ...] | list[int]) -> np.ndarray | None:
        """Column values for per-request starts, or None if some start is past its horizon."""
        x = np.zeros(self.num_vars, dtype=np.float64)
        for c, members in enumerate(self.class_members):
            first = int(self.class_first_col[c])
            t0 = int(self.col_time[first]) if first < self.class_first_col[c + 1] else 0
            for i in members:
                p = int(starts[i])
                if p < t0 or p > int(self.class_horizon[c]):
                    return None
                x[first + p - t0] += 1.0
        if self.cumulative:
            x = self._cumulative_from_counts(x)
        return x

    def _cumulative_from_counts(self, counts: np.ndarray) -> np.ndarray:
        """Sparse layout: per-column start counts -> z (cumulative) and w (running sums)."""
        assert self.aux_class is not None and self.aux_time is not None and self.class_output_len is not None
        out = np.zeros(self.num_vars, dtype=np.float64)
        n_z = int(self.class_first_col[-1])
        zs: list[np.ndarray] = []
        for c in range(len(self.class_members)):
            lo, hi = int(self.class_first_col[c]), int(self.class_first_col[c + 1])
            zs.append(np.cumsum(counts[lo:hi]))
            out[lo:hi] = zs[-1]
        for col in range(n_z, self.num_vars):
            c, t = int(self.aux_class[col - n_z]), int(self.aux_time[col - n_z])
            lo = int(self.class_first_col[c])
            t0, h, o = int(self.col_time[lo]), int(self.class_horizon[c]), int(self.class_output_len[c])
            ages = np.arange(t - o, t)  # z at epochs t-o..t-1, clipped to the class's range
            ages = ages[ages >= t0]
            out[col] = float(zs[c][np.minimum(ages, h) - t0].sum())
        return out

    def starts_from_vector(self, x: np.ndarray) -> tuple[int, ...]:
        """Per-request starts from column values; within a class the earliest starts go
        to the lowest request ids (members are stored in id order)."""
        counts = np.rint(np.asarray(x, dtype=np.float64)).astype(np.int64)
        if self.cumulative:
            z = counts
            counts = np.zeros_like(z)
            for c in range(len(self.class_members)):
                lo, hi = int(self.class_first_col[c]), int(self.class_first_col[c + 1])
                counts[lo:hi] = np.diff(z[lo:hi], prepend=0)
        n = sum(len(m) for m in self.class_members)
        starts = [0] * n
        for c, members in enumerate(self.class_members):
            lo, hi = int(self.class_first_col[c]), int(self.class_first_col[c + 1])
            times = np.repeat(self.col_time[lo:hi], np.maximum(counts[lo:hi], 0))
            if times.size != len(members):
                raise ValueError(
                    f"solution gives class {c} {times.size} starts for {len(members)} requests"
                )
            for i, t in zip(members, times.tolist(), strict=True):
                starts[i] = int(t)
        return tuple(starts)


def request_classes(inst: Instance, aggregate: bool) -> tuple[tuple[int, ...], ...]:
    """Groups of request indices; identical `(a, s, o)` share a class when aggregating.

    Classes are ordered by their first member; members by request id.
    """
    if not aggregate:
        return tuple((i,) for i in range(inst.n))
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in range(inst.n):
        groups.setdefault((inst.arrival[i], inst.prompt_len[i], inst.output_len[i]), []).append(i)
    classes = [tuple(sorted(g, key=lambda i: inst.request_ids[i])) for g in groups.values()]
    classes.sort(key=min)
    return tuple(classes)


def max_alive(inst: Instance) -> int:
    """Largest `k` such that the `k` smallest `s_i + 1` fit in `M`: no epoch can hold more
    running requests, since each one holds at least `s_i + 1`."""
    need = np.cumsum(np.sort(np.asarray(inst.prompt_len, dtype=np.int64) + 1))
    return int(np.searchsorted(need, inst.capacity, side="right"))


def class_arrays(inst: Instance, horizon: np.ndarray, aggregate: bool) -> tuple:
    """(classes, size, arrival, prompt, output, last start) per request class, the arrays both
    formulations index by class; ValueError if `horizon` lets a request start before it arrives."""
    a, s, o = inst.arrays()
    horizon = np.asarray(horizon, dtype=np.int64)
    if horizon.shape != a.shape or np.any(horizon < a):
        raise ValueError("horizon must give every request a last start epoch >= its arrival")
    classes = request_classes(inst, aggregate)
    rep = np.array([m[0] for m in classes], dtype=np.int64)  # representative request
    size = np.array([len(m) for m in classes], dtype=np.int64)
    # Identical requests have identical valid horizons; take the smallest to be safe.
    ch = np.array([int(horizon[list(m)].min()) for m in classes], dtype=np.int64)
    return classes, size, a[rep], s[rep], o[rep], ch


def build_model(
    inst: Instance,
    horizon: np.ndarray,
    *,
    aggregate: bool = True,
    cardinality_cuts: bool = False,
    threshold_cuts: int = 0,
    symmetry_cuts: bool = False,
    objective_lower_bound: int | None = None,
    chain_families: Sequence[ChainFamily] = (),
    formulation: str = "dense",
) -> TimeIndexedModel:
    """Build the model with per-request last-start epochs `horizon[i] >= arrival[i]`.

    `objective_lower_bound` adds the row `objective >= bound` (a valid cut when the bound
    is proven, e.g. LB_vol). `symmetry_cuts` only applies when `aggregate` is False: it
    orders identical requests, `p_i <= p_j` for consecutive ids. `chain_families`
    (`kvsched.bounds.chain`) add, per family and epoch, "at most one member's tail covers
    the epoch". The matrix is the same for
    the IP and its LP relaxation: integrality is a flag of the solve, not of the model.
    """
    if formulation == "sparse":
        from kvsched.bounds.sparse import build_sparse_model

        return build_sparse_model(
            inst, horizon, aggregate=aggregate, threshold_cuts=threshold_cuts, cardinality_cuts=cardinality_cuts,
            symmetry_cuts=symmetry_cuts, objective_lower_bound=objective_lower_bound,
            chain_families=chain_families,
        )
    if formulation != "dense":
        raise ValueError(f"unknown formulation {formulation!r}; use 'dense' or 'sparse'")
    classes, size, ca, cs, co, ch = class_arrays(inst, horizon, aggregate)
    n_cls = len(classes)
    ncols = ch - ca + 1
    first_col = np.concatenate([[0], np.cumsum(ncols)]).astype(np.int64)
    num_vars = int(first_col[-1])
    n_epochs = int((ch + co).max()) if n_cls else 0  # memory rows for epochs 1..n_epochs

    # Extra rows: ordering between consecutive identical requests, then the objective cut.
    extra_rows: list[list[tuple[int, float]]] = [[] for _ in range(n_cls)]  # (row offset, sign)
    extra_lower: list[float] = []
    extra_upper: list[float] = []
    n_sym = 0
    if symmetry_cuts and not aggregate:
        last_of: dict[tuple[int, int, int], int] = {}
        for c in sorted(range(n_cls), key=lambda c: inst.request_ids[classes[c][0]]):
            key = (int(ca[c]), int(cs[c]), int(co[c]))
            if key in last_of:  # p_prev - p_c <= 0
                extra_rows[last_of[key]].append((len(extra_lower), 1.0))
                extra_rows[c].append((len(extra_lower), -1.0))
                extra_lower.append(-np.inf)
                extra_upper.append(0.0)
                n_sym += 1
            last_of[key] = c
    a, _, o = inst.arrays()
    offset = float((o - a).sum())
    n_obj = 0
    if objective_lower_bound is not None:
        obj_row = len(extra_lower)
        for c in range(n_cls):
            extra_rows[c].append((obj_row, 1.0))
        extra_lower.append(float(objective_lower_bound) - offset)
        extra_upper.append(np.inf)
        n_obj = 1

    mem_base = n_cls
    card_base = mem_base + n_epochs
    thr_base = card_base + (n_epochs if cardinality_cuts else 0)
    # Threshold q: q+1 footprints of at least M//(q+1)+1 exceed M, so at most q such alive.
    thresholds = [inst.capacity // (q + 1) + 1 for q in range(1, threshold_cuts + 1)]
    chain_base = thr_base + n_epochs * len(thresholds)
    # Tail length per (family, class); 0 = not a member. Identical requests share peaks and
    # hence membership and tails, so the class representative decides.
    chain_tail = np.zeros((len(chain_families), n_cls), dtype=np.int64)
    for f, fam in enumerate(chain_families):
        tails = dict(zip(fam.members, fam.tail_len, strict=True))
        for c in range(n_cls):
            chain_tail[f, c] = tails.get(classes[c][0], 0)
    extra_base = chain_base + n_epochs * len(chain_families)
    n_rows_full = extra_base + len(extra_lower)

    idx_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    per_col = np.empty(n_cls, dtype=np.int64)
    for c in range(n_cls):
        k = np.arange(ca[c], ch[c] + 1, dtype=np.int64)[:, None]  # start epochs
        j = np.arange(1, co[c] + 1, dtype=np.int64)[None, :]  # age in rounds
        m = k.shape[0]
        blocks_i = [np.full((m, 1), c, dtype=np.int64), mem_base + k + j - 1]
        blocks_v = [np.ones((m, 1)), np.broadcast_to((cs[c] + j).astype(np.float64), (m, int(co[c])))]
        if cardinality_cuts:
            blocks_i.append(card_base + k + j - 1)
            blocks_v.append(np.ones((m, int(co[c]))))
        for q, theta in enumerate(thresholds):
            jq = j[:, max(0, int(theta - cs[c]) - 1) :]  # ages whose footprint s + age >= theta
            if jq.size:
                blocks_i.append(thr_base + q * n_epochs + k + jq - 1)
                blocks_v.append(np.ones((m, jq.size)))
        for f in range(len(chain_families)):
            h = int(chain_tail[f, c])
            if h:  # ages o-h+1..o: the tail (C - h, C]
                jq = j[:, int(co[c]) - h :]
                blocks_i.append(chain_base + f * n_epochs + k + jq - 1)
                blocks_v.append(np.ones((m, h)))
        for row, sign in extra_rows[c]:
            blocks_i.append(np.full((m, 1), extra_base + row, dtype=np.int64))
            blocks_v.append(sign * k.astype(np.float64))  # coefficient: the start epoch
        idx_parts.append(np.concatenate(blocks_i, axis=1).ravel())
        val_parts.append(np.concatenate(blocks_v, axis=1).ravel())
        per_col[c] = idx_parts[-1].size // m
    a_index_full = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    a_value = np.concatenate(val_parts) if val_parts else np.zeros(0)
    a_start = np.concatenate([[0], np.cumsum(np.repeat(per_col, ncols))]).astype(np.int32)

    row_lower = np.full(n_rows_full, -np.inf)
    row_upper = np.empty(n_rows_full)
    row_lower[:n_cls] = size
    row_upper[:n_cls] = size
    row_upper[mem_base:card_base] = inst.capacity
    if cardinality_cuts:
        row_upper[card_base:thr_base] = max_alive(inst)
    for q in range(len(thresholds)):
        row_upper[thr_base + q * n_epochs : thr_base + (q + 1) * n_epochs] = q + 1
    row_upper[chain_base:extra_base] = 1
    row_lower[extra_base:] = extra_lower
    row_upper[extra_base:] = extra_upper

    # Drop rows without nonzeros (epochs nobody can occupy) and renumber the rest.
    used = np.bincount(a_index_full, minlength=n_rows_full) > 0
    remap = np.cumsum(used) - 1
    kinds = {
        "assignment": used[:n_cls].sum(),
        "memory": used[mem_base:card_base].sum(),
        "cardinality": used[card_base:thr_base].sum(),
        "threshold": used[thr_base:chain_base].sum(),
        "chain": used[chain_base:extra_base].sum(),
        "ordering": n_sym,
        "objective-cut": n_obj,
    }
    col_class = np.repeat(np.arange(n_cls, dtype=np.int64), ncols)
    col_time = (np.arange(num_vars, dtype=np.int64) - first_col[col_class]) + ca[col_class]
    row_epoch = np.zeros(n_rows_full, dtype=np.int64)
    row_epoch[mem_base:card_base] = np.arange(1, n_epochs + 1)
    return TimeIndexedModel(
        cost=col_time.astype(np.float64),
        offset=offset,
        col_lower=np.zeros(num_vars),
        col_upper=size[col_class].astype(np.float64),
        a_start=a_start,
        a_index=remap[a_index_full].astype(np.int32),
        a_value=a_value.astype(np.float64),
        row_lower=row_lower[used],
        row_upper=row_upper[used],
        col_class=col_class,
        col_time=col_time,
        class_members=classes,
        class_horizon=ch,
        class_first_col=first_col,
        row_counts={k: int(v) for k, v in kinds.items()},
        memory_row_epoch=row_epoch[used],
    )
