"""The fluid benchmark against the WAIT spec's hand-computed test vectors (wait.md 15, T1-T3)."""

from __future__ import annotations

import json
import math

import pytest

from kvsched.bounds.fluid import RequestType, fluid_benchmark


def test_t1_toy_single_type_is_on_the_boundary():
    d1 = 0.01
    r = fluid_benchmark([(1, 1, 4.0)], 1 - 12 * d1, d1, 12)
    assert r.mass == (3.0,) and r.total_mass == 12 and r.rho == pytest.approx(0.12)
    assert r.iteration_time_s == pytest.approx(1.0) and r.per_stage == pytest.approx((4.0,))
    assert r.memory_tokens == pytest.approx(12) and r.throughput_tokens_per_s == 4 and r.completion_rate == 4
    assert r.verdict == "BOUNDARY"
    assert fluid_benchmark([(1, 1, 4.0)], 1 - 12 * d1, d1, 13).verdict == "STABLE"
    assert fluid_benchmark([(1, 1, 4.0)], 1 - 12 * d1, d1, 11).verdict == "MEMORY_INFEASIBLE"


def test_t2_prop3_instance():
    d1 = 0.05
    r = fluid_benchmark([(1, 1, 1.0), (1, 2, 1.0)], 1 - 9 * d1, d1, 9)
    assert r.mass == (3.0, 6.0) and r.total_mass == 9 and r.rho == pytest.approx(0.45)
    assert r.iteration_time_s == pytest.approx(1.0) and r.per_stage == pytest.approx((1.0, 1.0))
    assert r.memory_tokens == pytest.approx(9) and r.throughput_tokens_per_s == 3 and r.verdict == "BOUNDARY"


@pytest.mark.parametrize("types, s_tot, rho, dt_ms, n, m, thr, alpha, verdict", [
    ([(512, 20, 23.0)], 252_126, 0.10085, 11.79, (0.2711,), 2_972, 460, 8.31, "STABLE"),
    ([(512, 20, 15.4), (512, 50, 6.6)], 349_569, 0.13983, 12.32, (0.1898, 0.0813), 4_308, 638, 5.99, "STABLE"),
    ([(512, 1000, 2.0)], 2_026_024, 0.81041, 55.91, (0.1118,), 113_275, 2_000, 1.034, "STABLE"),
])
def test_t3_paper_constants(types, s_tot, rho, dt_ms, n, m, thr, alpha, verdict):
    r = fluid_benchmark(types, 0.0106, 4.0e-7, 137_000)
    assert r.total_mass == pytest.approx(s_tot, rel=1e-9) and r.rho == pytest.approx(rho, abs=5e-6)
    assert 1e3 * r.iteration_time_s == pytest.approx(dt_ms, abs=0.005)
    assert r.per_stage == pytest.approx(n, abs=5e-5)
    assert r.memory_tokens == pytest.approx(m, abs=0.5) and r.throughput_tokens_per_s == pytest.approx(thr)
    assert r.rate_scale_to_capacity == pytest.approx(alpha, abs=5e-3) and r.verdict == verdict
    # Scaling every rate by alpha* puts M* exactly on the capacity.
    scaled = [(p, o, lam * r.rate_scale_to_capacity) for p, o, lam in types]
    assert fluid_benchmark(scaled, 0.0106, 4.0e-7, 137_000).memory_tokens == pytest.approx(137_000, rel=1e-9)


def test_t3_unstable_row_and_json():
    r = fluid_benchmark([(512, 1000, 3.0)], 0.0106, 4.0e-7, 137_000)
    assert r.verdict == "UNSTABLE" and r.rho == pytest.approx(1.21561, abs=5e-6)
    assert math.isinf(r.iteration_time_s) and r.throughput_tokens_per_s == 3_000
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))  # strict JSON: infinities become null
    assert d["iteration_time_s"] is None and d["per_stage"] == [None] and d["verdict"] == "UNSTABLE"


def test_engine_convention_counts_one_decode_fewer():
    paper = fluid_benchmark([(1, 2, 1.0)], 0.5, 0.01, 100)
    engine = fluid_benchmark([(1, 2, 1.0)], 0.5, 0.01, 100, first_token_in_prefill=True)
    assert paper.mass == (6.0,) and engine.mass == (3.0,)  # (l'+1)(l + l'/2) with l' = 2, then 1
    assert engine.throughput_tokens_per_s == paper.throughput_tokens_per_s == 2


@pytest.mark.parametrize("bad", [[], [(0, 5, 1.0)], [(5, 0, 1.0)], [(5, 5, 0.0)], [(5, 5, float("nan"))]])
def test_bad_types_raise(bad):
    with pytest.raises(ValueError):
        fluid_benchmark(bad, 0.01, 1e-6, 1000)


def test_request_type_is_exported():
    assert RequestType(2, 3, 1.5).rate == 1.5


def test_cli_prints_the_benchmark_as_json(exe):
    import subprocess

    proc = subprocess.run([exe, "fluid", "--type", "512,20,23", "--json"], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["verdict"] == "STABLE" and d["total_mass"] == 252_126 and abs(d["memory_tokens"] - 2_972) < 0.5
    bad = subprocess.run([exe, "fluid"], capture_output=True, text=True, check=False, timeout=120)
    assert bad.returncode == 2 and "--type" in bad.stderr
