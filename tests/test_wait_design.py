"""WAIT threshold design against the spec's derived values (wait.md 7.3, 9.2; T1, T3, T7, T8)."""

from __future__ import annotations

import pytest

from kvsched.schedulers.wait_design import (
    batch_limit_thresholds,
    booking_limit_thresholds,
    check_wait_thresholds,
    proportional_thresholds,
    rotating_limit,
    segment_budgets,
)

PAPER = (0.0106, 4.0e-7, 137_000)  # d0, d1, C (spec A3)


def test_t3_proportional_recipe_for_p512d20():
    d = proportional_thresholds([(512, 20, 23.0)], *PAPER)
    assert d.c_range_s == pytest.approx((0.01179, 0.5434), abs=5e-5)
    assert d.thresholds == (1,) and d.check.ok and d.check.batch_memory_tokens == 10_962


def test_t1_boundary_thresholds_are_the_fluid_equilibrium():
    d = proportional_thresholds([(1, 1, 4.0)], 0.88, 0.01, 12)
    assert d.thresholds == (4,) and d.c_s == pytest.approx(1.0) and d.check.ok
    assert d.check.memory_margin_tokens == pytest.approx(0.0)


def test_check_names_the_failing_inequality():
    too_small = check_wait_thresholds([(1, 1, 4.0)], [3], 0.88, 0.01, 12)
    assert not too_small.ok and "load balance of type 0" in too_small.failures[0]
    too_big = check_wait_thresholds([(1, 1, 4.0)], [5], 0.88, 0.01, 12)
    assert not too_big.ok and any("memory" in f for f in too_big.failures)


def test_no_thresholds_when_the_fluid_target_does_not_fit():
    with pytest.raises(ValueError, match="UNSTABLE"):
        proportional_thresholds([(512, 1000, 3.0)], *PAPER)
    with pytest.raises(ValueError, match="MEMORY_INFEASIBLE"):
        proportional_thresholds([(1, 1, 4.0)], 0.88, 0.01, 11)


def test_two_types_get_thresholds_in_proportion_to_their_rates():
    d = proportional_thresholds([(512, 20, 15.4), (512, 50, 6.6)], *PAPER, c_s=0.3)
    assert d.thresholds == (5, 2) and d.check.ok and d.check.batch_memory_tokens == 5 * 10_962 + 2 * 27_387
    # c above C / S_tot (0.392 here) breaks the memory condition.
    over = proportional_thresholds([(512, 20, 15.4), (512, 50, 6.6)], *PAPER, c_s=0.5)
    assert not over.check.ok and over.check.memory_margin_tokens < 0


def test_authors_rules():
    assert booking_limit_thresholds([(512, 20, 15.4), (512, 50, 6.6)], 300) == (7, 3)
    assert booking_limit_thresholds([(512, 20, 15.4), (512, 50, 6.6)], 30) == (1, 1)  # at least 1
    assert batch_limit_thresholds([(512, 20, 1.0), (512, 50, 1.0)], 42) == pytest.approx((1.0, 21 / 51))


@pytest.mark.parametrize("eta, per_stage, exact, budgets", [
    (0.0, (1.0345, 0.3103), (20.69, 9.31), (21, 9)),
    (0.05, (0.9836, 0.3443), (19.67, 10.33), (20, 10)),
])
def test_t7_segment_budgets(eta, per_stage, exact, budgets):
    b = segment_budgets([0.7, 0.3], [20, 30], 30, eta=eta)
    assert b.per_stage == pytest.approx(per_stage, abs=5e-5)
    assert b.budgets_exact == pytest.approx(exact, abs=5e-3) and b.budgets == budgets


def test_t8_rotating_limits():
    limits = [rotating_limit(21, 20, t) for t in range(20)]
    assert limits[0] == 2 and set(limits[1:]) == {1} and sum(limits) == 21
    lmsys = [rotating_limit(300, 500, t) for t in range(1000)]
    assert sum(lmsys) == 600 and lmsys[299] == 1 and lmsys[300] == 0 and lmsys[500] == 1
