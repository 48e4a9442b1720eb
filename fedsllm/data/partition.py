"""Which training samples each client holds: IID or Dirichlet non-IID.

Pure index arithmetic on numpy, seeded, so every process derives the same
shards from the scenario alone and no data crosses the wire. Building the
samples themselves is left to `fedsllm.data.federated`.

How sizes and skew combine: client k always holds exactly
`client_sizes(num_samples, fractions)[k]` samples (the fractions, normalized,
rounded by largest remainder, at least one each), in both modes. The
Dirichlet mode then skews *which* samples: every attribute class c draws
client proportions p_c ~ Dirichlet(alpha * 1_K); samples are visited in a
seeded random order and each goes to client k with probability proportional
to p_c[k] among the clients that still have room. Quantity skew is therefore
set by `fractions` alone and label skew by `alpha` alone; as the last clients
fill up their last samples are forced, which softens the skew a little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsllm.data.dataset import seed_words
from fedsllm.errors import ConfigError

_STREAM_IID = 1
_STREAM_DIRICHLET = 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(seed_words(seed, stream))


def client_sizes(num_samples: int, fractions: Sequence[float], num_clients: int) -> list[int]:
    """Samples per client: `fractions` normalized (equal when empty), rounded
    by largest remainder so they sum to `num_samples`, at least one each."""
    if num_clients < 1:
        raise ConfigError("clients.num_clients", num_clients, "must be >= 1")
    if num_clients > num_samples:
        raise ConfigError(
            "clients.num_clients",
            num_clients,
            f"must be <= the number of training samples ({num_samples})",
        )
    if fractions and len(fractions) != num_clients:
        raise ConfigError(
            "data.client_fractions",
            len(fractions),
            f"must list clients.num_clients={num_clients} entries",
        )
    weights = np.asarray(fractions if fractions else [1.0] * num_clients, dtype=np.float64)
    for i, w in enumerate(weights):
        if not (np.isfinite(w) and w > 0):
            raise ConfigError(f"data.client_fractions[{i}]", float(w), "must be > 0")
    exact = num_samples * weights / weights.sum()
    sizes = np.maximum(np.floor(exact).astype(np.int64), 1)
    # Hand out what is left by largest remainder; ties go to the lower client
    # id (stable sort). Raising tiny shares to one sample can overshoot
    # instead, which is paid back by the clients furthest above their share.
    missing = num_samples - int(sizes.sum())
    if missing > 0:
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:missing]] += 1
    while missing < 0:
        over = np.where(sizes > 1, sizes - exact, -np.inf)
        sizes[int(np.argmax(over))] -= 1
        missing += 1
    return [int(s) for s in sizes]


def partition_indices(
    num_samples: int,
    num_clients: int,
    seed: int,
    fractions: Sequence[float] = (),
    attributes: Sequence[object] | None = None,
    alpha: float | None = None,
) -> list[np.ndarray]:
    """Sample indices (int64, sorted) per client; disjoint, covering all
    samples, sizes from `client_sizes`.

    IID when `alpha` is None; otherwise Dirichlet(alpha) label skew over the
    classes in `attributes` (one hashable value per sample, e.g. the E2E
    `food`; a missing value can be its own class), as the module docstring
    describes.
    """
    sizes = client_sizes(num_samples, fractions, num_clients)
    if alpha is None:
        order = _rng(seed, _STREAM_IID).permutation(num_samples)
        bounds = np.cumsum([0, *sizes])
        return [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(num_clients)]
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError("data.dirichlet_alpha", alpha, "must be > 0")
    if attributes is None or len(attributes) != num_samples:
        got = None if attributes is None else len(attributes)
        raise ConfigError(
            "data.partition",
            got,
            f"dirichlet needs one attribute value per sample ({num_samples})",
        )
    return _dirichlet(sizes, attributes, alpha, _rng(seed, _STREAM_DIRICHLET))


def _dirichlet(
    sizes: list[int], attributes: Sequence[object], alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    num_clients = len(sizes)
    # Classes are numbered by the sorted text of their value, so the numbering
    # (and with it the draws) does not depend on sample order or value types.
    keys = [str(a) for a in attributes]
    class_names = sorted(set(keys))
    class_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([class_of[k] for k in keys], dtype=np.int64)
    proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(class_names))
    # A tiny alpha can underflow every component but one to 0; a floor keeps
    # every client reachable once the favoured ones are full.
    proportions = np.maximum(proportions, 1e-12)
    room = np.asarray(sizes, dtype=np.int64)
    owner = np.empty(len(labels), dtype=np.int64)
    uniforms = rng.random(len(labels))
    for idx, u in zip(rng.permutation(len(labels)), uniforms, strict=True):
        weights = proportions[labels[idx]] * (room > 0)
        cumulative = np.cumsum(weights)
        k = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
        k = min(k, num_clients - 1)
        while room[k] == 0:  # guard against float edge cases at the boundary
            k = (k + 1) % num_clients
        owner[idx] = k
        room[k] -= 1
    return [np.flatnonzero(owner == k).astype(np.int64) for k in range(num_clients)]
