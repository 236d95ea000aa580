"""Prediction models, their spec strings and the predictors schedulers read them through.

Source: the MC-SF paper's robustness study (arXiv 2502.07115). Clipping to M - s is the
scheduler's job, so the models here are unclipped.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.predictors import (
    PREDICTORS,
    PredictionModel,
    make_predictor,
    parse_predictions,
    with_predictions,
)
from kvsched.request import Request

FAST = settings(max_examples=80, deadline=None)
TOL = 1e-9

outputs = st.lists(st.integers(1, 2000), min_size=1, max_size=40)
seeds = st.integers(0, 2**32 - 1)


def workload(outs, prompts=None):
    prompts = prompts or [1 + (i % 7) for i in range(len(outs))]
    return [Request(i, float(i // 3), prompts[i], o) for i, o in enumerate(outs)]


def attach(reqs, spec, seed=0):
    return with_predictions(reqs, spec, np.random.default_rng(seed))


def snapshot(reqs):
    return [dataclasses.astuple(r) for r in reqs]


# --- the models (section 8) --------------------------------------------------------------------

@FAST
@given(outputs, seeds)
def test_exact(outs, seed):
    out = attach(workload(outs), "exact", seed)
    for r, o in zip(out, outs):
        assert r.predicted_output_len == o
        assert r.predicted_output_interval == (o, o)


@FAST
@given(outputs, st.floats(0.0, 2.0), seeds)
def test_relative_within_rounded_band(outs, eps, seed):
    out = attach(workload(outs), f"relative:eps={eps!r}", seed)
    for r, o in zip(out, outs):
        p = r.predicted_output_len
        # round(x) for either half-way convention lies in [ceil(x - 1/2), floor(x + 1/2)]
        lo = max(1, math.ceil(o * (1 - eps) - 0.5 - TOL))
        hi = max(1, math.floor(o * (1 + eps) + 0.5 + TOL))
        assert isinstance(p, int) and p >= 1
        assert lo <= p <= hi, (o, eps, p, lo, hi)
        assert r.predicted_output_interval is None


@FAST
@given(outputs, seeds)
def test_relative_with_zero_eps_is_exact(outs, seed):
    for spec in ("relative:eps=0", "relative:0"):
        out = attach(workload(outs), spec, seed)
        assert [r.predicted_output_len for r in out] == outs


def test_relative_is_noisy_and_roughly_unbiased():
    outs = [1000] * 2000
    p = np.array([r.predicted_output_len for r in attach(workload(outs), "relative:eps=0.5", 7)])
    assert len(set(p.tolist())) > 100
    assert p.min() >= 500 and p.max() <= 1500
    assert abs(p.mean() / 1000 - 1) < 0.02
    assert (p < 1000).mean() > 0.4 and (p > 1000).mean() > 0.4


def test_relative_large_eps_is_clipped_to_one():
    p = [r.predicted_output_len for r in attach(workload([3] * 500), "relative:eps=2", 1)]
    assert min(p) == 1 and max(p) <= 9


@FAST
@given(outputs, st.floats(1.0, 4.0), seeds)
def test_overestimate_between_o_and_alpha_o(outs, alpha, seed):
    out = attach(workload(outs), f"overestimate:alpha={alpha!r}", seed)
    for r, o in zip(out, outs):
        p = r.predicted_output_len
        assert o <= p <= alpha * o + TOL, (o, alpha, p)
        assert r.predicted_output_interval is None


def test_overestimate_spreads_over_the_band_and_alpha_one_is_exact():
    p = np.array([r.predicted_output_len for r in attach(workload([1000] * 2000), "overestimate:alpha=3", 2)])
    assert p.min() >= 1000 and p.max() <= 3000
    assert abs(p.mean() - 2000) < 60  # V ~ Uniform[0, 1]: mean o (1 + (A - 1)/2)
    exact = attach(workload([5, 9, 13]), "overestimate:alpha=1", 2)
    assert [r.predicted_output_len for r in exact] == [5, 9, 13]


@FAST
@given(outputs, st.floats(0.05, 1.0), seeds)
def test_interval_ratio(outs, alpha, seed):
    out = attach(workload(outs), f"interval-ratio:alpha={alpha!r}", seed)
    for r, o in zip(out, outs):
        assert r.predicted_output_len is None
        lo, hi = r.predicted_output_interval
        assert 1 <= lo <= o <= hi
        assert hi <= math.ceil(o / alpha - TOL) + 1  # u = ceil(o / (A + (1 - A) V)), V in [0, 1)
        assert lo == max(1, math.floor(alpha * hi)) or lo == o  # (the round-off guard keeps lo <= o)
        assert alpha - 1 / hi - TOL <= lo / hi <= max(alpha, 1 / hi) + TOL


def test_interval_ratio_is_close_to_alpha_for_long_outputs():
    for alpha in (0.2, 0.5, 0.8):
        out = attach(workload([1000] * 500), f"interval-ratio:alpha={alpha}", 3)
        ratios = np.array([lo / hi for lo, hi in (r.predicted_output_interval for r in out)])
        assert np.all(np.abs(ratios - alpha) < 0.01)
        widths = {r.predicted_output_interval for r in out}
        assert len(widths) > 50  # the interval moves around o


def test_interval_ratio_one_is_the_exact_interval():
    out = attach(workload([1, 7, 300]), "interval-ratio:alpha=1", 0)
    assert [r.predicted_output_interval for r in out] == [(1, 1), (7, 7), (300, 300)]


@FAST
@given(outputs)
def test_interval_common_default_is_workload_min_max(outs):
    out = attach(workload(outs), "interval-common")
    for r in out:
        assert r.predicted_output_interval == (min(outs), max(outs))
        assert r.predicted_output_len is None


def test_interval_common_explicit_bounds():
    reqs = workload([5, 9, 7])
    assert {r.predicted_output_interval for r in attach(reqs, "interval-common:lo=2,hi=40")} == {(2, 40)}
    assert {r.predicted_output_interval for r in attach(reqs, "interval-common:lo=3")} == {(3, 9)}
    assert {r.predicted_output_interval for r in attach(reqs, "interval-common:hi=12")} == {(5, 12)}


@pytest.mark.parametrize("spec, rid", [
    ("interval-common:lo=6,hi=20", 10),  # o = 5 < lo
    ("interval-common:lo=1,hi=8", 11),  # o = 9 > hi
    ("interval-common:hi=6", 11),
])
def test_interval_common_outside_raises_naming_the_request(spec, rid):
    reqs = [Request(10, 0.0, 1, 5), Request(11, 0.0, 1, 9)]
    with pytest.raises(ValueError, match=rf"request {rid}\b"):
        attach(reqs, spec)


@pytest.mark.parametrize("spec", [
    "exact", "relative:eps=0.5", "overestimate:alpha=2", "interval-ratio:alpha=0.5",
    "interval-common", "interval-common:lo=1,hi=5",
])
def test_empty_workload(spec):
    assert attach([], spec) == []


# --- determinism and no mutation -------------------------------------------------------------

SPECS = ["exact", "relative:eps=0.8", "overestimate:alpha=2.5", "interval-ratio:alpha=0.3", "interval-common"]


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_predictions_inputs_untouched(spec):
    reqs = workload(list(range(1, 60)))
    reqs[3] = dataclasses.replace(reqs[3], predicted_output_len=999, predicted_output_interval=(1, 999))
    reqs[4].num_output_tokens = 2  # progress on an input is not carried over
    before = snapshot(reqs)
    a = attach(reqs, spec, 123)
    b = attach(reqs, spec, 123)
    assert snapshot(reqs) == before
    assert snapshot(a) == snapshot(b)
    for r, x in zip(reqs, a):
        assert x is not r
        assert (x.request_id, x.arrival_time, x.prompt_len, x.output_len) == (
            r.request_id, r.arrival_time, r.prompt_len, r.output_len)
        assert x.num_output_tokens == x.num_computed_tokens == 0 and x.finish_time is None
    # The old predictions are replaced, not merged.
    point = spec.split(":")[0] in ("exact", "relative", "overestimate")
    assert (a[3].predicted_output_len is None) == (not point)
    assert a[3].predicted_output_interval != (1, 999)


@pytest.mark.parametrize("spec", ["relative:eps=0.8", "overestimate:alpha=2.5", "interval-ratio:alpha=0.3"])
def test_different_seeds_differ(spec):
    reqs = workload([500] * 50)
    assert snapshot(attach(reqs, spec, 1)) != snapshot(attach(reqs, spec, 2))


def test_with_predictions_accepts_a_model_object():
    reqs = workload([4, 8, 15])
    model = PredictionModel("overestimate", alpha=2.0)
    assert snapshot(with_predictions(reqs, model, np.random.default_rng(5))) == snapshot(
        with_predictions(reqs, "overestimate:alpha=2", np.random.default_rng(5)))


# --- parse_predictions ------------------------------------------------------------------------

@pytest.mark.parametrize("text, model", [
    ("exact", PredictionModel("exact")),
    (" exact ", PredictionModel("exact")),
    ("relative:0.5", PredictionModel("relative", eps=0.5)),
    ("relative:eps=0.5", PredictionModel("relative", eps=0.5)),
    ("relative: eps = 0.5", PredictionModel("relative", eps=0.5)),
    ("overestimate:2", PredictionModel("overestimate", alpha=2.0)),
    ("overestimate:alpha=2", PredictionModel("overestimate", alpha=2.0)),
    ("interval-ratio:0.3", PredictionModel("interval-ratio", alpha=0.3)),
    ("interval-ratio:alpha=0.3", PredictionModel("interval-ratio", alpha=0.3)),
    ("interval-common", PredictionModel("interval-common")),
    ("interval-common:lo=10,hi=500", PredictionModel("interval-common", lo=10, hi=500)),
])
def test_parse_accepts(text, model):
    assert parse_predictions(text) == model
    assert parse_predictions(model.spec) == model  # the spec string round-trips


@pytest.mark.parametrize("text, words", [
    ("oracle", ["'oracle'", "exact", "relative"]),
    ("relative:beta=0.5", ["'beta'", "does not take"]),
    ("relative:eps=abc", ["eps", "'abc'", "not a number"]),
    ("relative:abc", ["'abc'", "not a number"]),
    ("interval-common:lo=1.5", ["lo", "'1.5'", "not a number"]),
    ("interval-common:5", ["named parameters"]),
    ("relative:eps=nan", ["eps", "finite"]),
    ("overestimate:alpha=inf", ["alpha", "finite"]),
    ("relative:eps=-0.1", ["eps", "-0.1"]),
    ("overestimate:alpha=0.5", ["alpha", "0.5"]),
    ("interval-ratio:alpha=0", ["alpha", "(0, 1]"]),
    ("interval-ratio:alpha=1.5", ["alpha", "1.5"]),
    ("interval-common:lo=50,hi=10", ["lo=50", "hi=10"]),
])
def test_parse_rejects_with_a_clear_message(text, words):
    with pytest.raises(ValueError) as err:
        parse_predictions(text)
    for word in words:
        assert word in str(err.value), (text, str(err.value))


@pytest.mark.parametrize("text", ["overestimate:eps=2", "relative:alpha=2", "exact:eps=0.5", "interval-ratio:lo=3",
                                  "exact:1", "relative:eps=1,eps=2"])
def test_parse_rejects_parameters_of_another_kind(text):
    with pytest.raises(ValueError):
        parse_predictions(text)


@pytest.mark.parametrize("text", ["interval-common:lo=0", "interval-common:lo=-3", "interval-common:hi=0"])
def test_parse_rejects_one_sided_common_bounds_below_one(text):
    with pytest.raises(ValueError):
        parse_predictions(text)


# --- predictors -----------------------------------------------------------------------------

def test_make_predictor_names_and_values():
    assert set(PREDICTORS) == {"oracle", "predicted", "interval-high", "interval-low"}
    r = Request(3, 0.0, 2, 10, predicted_output_len=12, predicted_output_interval=(4, 20))
    values = {name: make_predictor(name).output_len(r) for name in PREDICTORS}
    assert values == {"oracle": 10, "predicted": 12, "interval-high": 20, "interval-low": 4}
    for name in PREDICTORS:
        assert make_predictor(name).name == name


def test_make_predictor_unknown_name():
    with pytest.raises(ValueError, match="'psychic'"):
        make_predictor("psychic")


@pytest.mark.parametrize("name, missing", [
    ("predicted", "predicted_output_len"),
    ("interval-high", "predicted_output_interval"),
    ("interval-low", "predicted_output_interval"),
])
def test_missing_prediction_raises(name, missing):
    r = Request(42, 0.0, 2, 10)
    with pytest.raises(ValueError, match=f"request 42 has no {missing}"):
        make_predictor(name).output_len(r)


def test_point_predictor_fails_on_interval_only_predictions():
    (r,) = attach([Request(5, 0.0, 1, 8)], "interval-ratio:alpha=0.5")
    with pytest.raises(ValueError, match="with_predictions"):
        make_predictor("predicted").output_len(r)
    lo, hi = r.predicted_output_interval
    assert make_predictor("interval-low").output_len(r) == lo
    assert make_predictor("interval-high").output_len(r) == hi


@pytest.mark.parametrize("spec", ["exact", "relative:eps=0.5", "overestimate:alpha=2", "interval-ratio:alpha=0.5",
                                  "interval-common:lo=1,hi=5000", "interval-common"])
def test_copies_equal_copy_fresh_then_replace(spec):
    # apply() builds each copy with one constructor call; it must equal the obvious
    # construction (a fresh copy with the two prediction fields replaced), types included.
    reqs = [Request(i, 0.5 * i, 10 + i, 1 + 7 * i % 300, prefix_block_ids=(1, 2) if i % 3 else None,
                    prefix_block_size=16) for i in range(40)]
    reqs[5].num_output_tokens = 3  # progress on an input is not copied
    got = attach(reqs, spec, seed=3)
    ref = attach(reqs, spec, seed=3)
    for g, r, src in zip(got, ref, reqs, strict=True):
        want = dataclasses.replace(src.copy_fresh(), predicted_output_len=r.predicted_output_len,
                                   predicted_output_interval=r.predicted_output_interval)
        assert dataclasses.astuple(g) == dataclasses.astuple(want)
        assert type(g.predicted_output_len) in (int, type(None))
        assert g.predicted_output_interval is None or all(type(v) is int for v in g.predicted_output_interval)


@pytest.mark.parametrize("spec", SPECS)
def test_assign_sets_what_apply_copies(spec):
    # build_workload sets predictions in place on its own requests (assign) instead of copying
    # them (apply): the same predictions from the same draws.
    reqs = workload([1 + (i * 37) % 900 for i in range(80)])
    copied = attach(reqs, spec, 7)
    model = parse_predictions(spec)
    model.assign(reqs, np.random.default_rng(7))
    assert snapshot(reqs) == snapshot(copied)


def test_workloads_built_with_predictions_share_no_request():
    # build_workload sets predictions in place on the requests it loaded: a second build of the
    # same trace must not touch the first one's requests.
    from kvsched.workload import build_workload

    first, _ = build_workload("azure-conv", num_requests=20, predictions="exact")
    before = snapshot(first)
    second, _ = build_workload("azure-conv", num_requests=20, predictions="overestimate:alpha=3", seed=4)
    assert snapshot(first) == before
    assert not {id(r) for r in first} & {id(r) for r in second}
    assert [r.predicted_output_len for r in first] == [r.output_len for r in first]
    assert any(r.predicted_output_len > r.output_len for r in second)
