"""partition_indices: sizes, fractions, coverage, IID vs Dirichlet skew."""

from __future__ import annotations

import numpy as np
import pytest

from fedsllm.data.e2e import FOODS, generate_e2e
from fedsllm.data.partition import client_sizes, partition_indices
from fedsllm.errors import ConfigError


def _check_cover(parts: list[np.ndarray], num_samples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == num_samples
    assert np.array_equal(np.sort(joined), np.arange(num_samples))
    assert all(len(p) >= 1 for p in parts)


@pytest.mark.parametrize(
    ("num_samples", "fractions", "num_clients", "expected"),
    [
        (10, (), 3, [4, 3, 3]),
        (10, (1, 2, 7), 3, [1, 2, 7]),
        (2000, (1, 2, 3), 3, [333, 667, 1000]),
        (10, (1, 1, 1000), 3, [1, 1, 8]),
        (3, (1, 100, 1), 3, [1, 1, 1]),
        (5, (), 5, [1, 1, 1, 1, 1]),
    ],
)
def test_client_sizes(num_samples, fractions, num_clients, expected) -> None:
    assert client_sizes(num_samples, fractions, num_clients) == expected


def test_impossible_requests() -> None:
    with pytest.raises(ConfigError) as err:
        partition_indices(3, 4, seed=0)
    assert err.value.path == "clients.num_clients"
    with pytest.raises(ConfigError) as err:
        partition_indices(10, 3, seed=0, fractions=(1.0, 2.0))
    assert err.value.path == "data.client_fractions"
    with pytest.raises(ConfigError) as err:
        partition_indices(10, 2, seed=0, attributes=None, alpha=0.5)
    assert err.value.path == "data.partition"
    with pytest.raises(ConfigError) as err:
        partition_indices(10, 2, seed=0, attributes=["a"] * 10, alpha=0.0)
    assert err.value.path == "data.dirichlet_alpha"


@pytest.mark.parametrize("alpha", [None, 0.1, 1.0])
@pytest.mark.parametrize("fractions", [(), (0.5, 0.3, 0.2, 0.05)])
def test_sizes_coverage_and_seeding(alpha, fractions) -> None:
    foods = [r.attributes["food"] for r in generate_e2e(500, 0)]
    parts = partition_indices(500, 4, seed=1, fractions=fractions, attributes=foods, alpha=alpha)
    _check_cover(parts, 500)
    assert [len(p) for p in parts] == client_sizes(500, fractions, 4)
    again = partition_indices(500, 4, seed=1, fractions=fractions, attributes=foods, alpha=alpha)
    other = partition_indices(500, 4, seed=2, fractions=fractions, attributes=foods, alpha=alpha)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def _mean_tv_from_global(parts: list[np.ndarray], foods: list[str]) -> float:
    """Mean total-variation distance of each client's food mix from the global mix."""
    labels = np.array([FOODS.index(f) for f in foods])
    overall = np.bincount(labels, minlength=len(FOODS)) / len(labels)
    dists = []
    for p in parts:
        mix = np.bincount(labels[p], minlength=len(FOODS)) / len(p)
        dists.append(0.5 * np.abs(mix - overall).sum())
    return float(np.mean(dists))


def test_dirichlet_skews_and_iid_does_not() -> None:
    foods = [r.attributes["food"] for r in generate_e2e(2000, 0)]
    iid = partition_indices(2000, 4, seed=0)
    skew = partition_indices(2000, 4, seed=0, attributes=foods, alpha=0.3)
    mild = partition_indices(2000, 4, seed=0, attributes=foods, alpha=100.0)
    tv_iid, tv_skew, tv_mild = (_mean_tv_from_global(p, foods) for p in (iid, skew, mild))
    assert tv_iid < 0.08
    assert tv_mild < 0.1
    assert tv_skew > 0.25
    assert tv_skew > 3 * tv_iid


def test_dirichlet_tiny_alpha_still_fills_every_client() -> None:
    foods = ["same"] * 50
    parts = partition_indices(50, 5, seed=0, attributes=foods, alpha=1e-4)
    _check_cover(parts, 50)
    assert [len(p) for p in parts] == [10] * 5
