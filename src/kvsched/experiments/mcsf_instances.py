"""Synthetic instances of the MC-SF study (the MC-SF paper's studies), theory mode, seeded explicitly.

Every generator takes a `numpy.random.Generator` and touches no global state. Use
`instance_seed(base_seed, model, index)` to derive the generator of instance `index`
of arrival model 1 or 2, so that any single instance can be regenerated on its own.

* Model 1 (all at once): `M ~ U{30..50}`, `n ~ U{40..60}`, `s ~ U{1..5}`,
  `o ~ U{1..M-s}`, every `a = 0`.
* Model 2 (Poisson online): `M`, `s`, `o` as above; `T ~ U{40..60}` epochs, a rate
  `lambda ~ U[0.5, 1.5]` drawn once per instance, and `Poisson(lambda)` arrivals in each
  epoch `0..T-1` (docs/conventions.md).
"""

from __future__ import annotations

import numpy as np

from kvsched.bounds.instance import Instance


def instance_seed(base_seed: int, model: int, index: int) -> np.random.SeedSequence:
    """Seed of instance `index` of arrival `model` (1 or 2) in a study seeded `base_seed`."""
    if model not in (1, 2):
        raise ValueError(f"arrival model must be 1 or 2, got {model}")
    return np.random.SeedSequence([int(base_seed), int(model), int(index)])


def instance_rng(base_seed: int, model: int, index: int) -> np.random.Generator:
    return np.random.default_rng(instance_seed(base_seed, model, index))


def _lengths(rng: np.random.Generator, n: int, capacity: int, prompt_max: int) -> tuple[np.ndarray, np.ndarray]:
    # s ~ U{1..prompt_max}, then o ~ U{1..M-s}: every request fits (s + o <= M).
    s = rng.integers(1, prompt_max, size=n, endpoint=True)
    o = rng.integers(1, capacity - s, endpoint=True)
    return s, o


def model1_instance(
    rng: np.random.Generator,
    *,
    capacity_range: tuple[int, int] = (30, 50),
    n_range: tuple[int, int] = (40, 60),
    prompt_max: int = 5,
) -> Instance:
    """Arrival model 1: all requests present at epoch 0."""
    capacity = int(rng.integers(capacity_range[0], capacity_range[1], endpoint=True))
    n = int(rng.integers(n_range[0], n_range[1], endpoint=True))
    s, o = _lengths(rng, n, capacity, prompt_max)
    return Instance((0,) * n, tuple(s.tolist()), tuple(o.tolist()), capacity)


def model2_instance(
    rng: np.random.Generator,
    *,
    capacity_range: tuple[int, int] = (30, 50),
    epochs_range: tuple[int, int] = (40, 60),
    rate_range: tuple[float, float] = (0.5, 1.5),
    prompt_max: int = 5,
) -> Instance:
    """Arrival model 2: Poisson arrivals per epoch over `T` epochs, one rate per instance.

    The instance may be empty only if every epoch draws zero arrivals (vanishingly rare
    for the default ranges); requests are numbered in arrival order.
    """
    capacity = int(rng.integers(capacity_range[0], capacity_range[1], endpoint=True))
    epochs = int(rng.integers(epochs_range[0], epochs_range[1], endpoint=True))
    rate = float(rng.uniform(rate_range[0], rate_range[1]))
    counts = rng.poisson(rate, size=epochs)
    arrival = np.repeat(np.arange(epochs, dtype=np.int64), counts)
    s, o = _lengths(rng, int(arrival.size), capacity, prompt_max)
    return Instance(tuple(arrival.tolist()), tuple(s.tolist()), tuple(o.tolist()), capacity)


def small_instance(
    rng: np.random.Generator,
    *,
    capacity_range: tuple[int, int] = (6, 14),
    n_range: tuple[int, int] = (3, 7),
    prompt_max: int = 3,
    max_arrival: int = 0,
) -> Instance:
    """A tiny instance for tests (the sizes of the hand-computed test vectors): `M` 6-14, `n` 3-7, arrivals in
    `0..max_arrival` (all 0 by default)."""
    capacity = int(rng.integers(capacity_range[0], capacity_range[1], endpoint=True))
    n = int(rng.integers(n_range[0], n_range[1], endpoint=True))
    s, o = _lengths(rng, n, capacity, min(prompt_max, capacity - 1))
    arrival = np.sort(rng.integers(0, max_arrival, size=n, endpoint=True))
    return Instance(tuple(arrival.tolist()), tuple(s.tolist()), tuple(o.tolist()), capacity)


def generate(model: int, base_seed: int, index: int) -> Instance:
    """Instance `index` of arrival `model` for `base_seed`."""
    rng = instance_rng(base_seed, model, index)
    return model1_instance(rng) if model == 1 else model2_instance(rng)
