"""Will a run fit in this machine's memory? An estimate made before anything starts.

Every role is its own OS process that imports torch, transformers, peft and
grpc and builds the whole base model before keeping its part, so memory grows
linearly with the number of clients. Starting more clients than fit drives
the machine into the OOM killer, which takes the user's other work with it;
`fedsllm run` and `fedsllm compare` therefore refuse such a run up front,
naming the estimate and the flag that overrides the check.

The per-process figures are measured (see PROCESS_OVERHEAD_BYTES) and the
model term is counted from the scenario's real model config, so the estimate
follows bigger models. It is deliberately an estimate, not a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError

GIB = 1024**3

PROCESS_OVERHEAD_BYTES = {"client": 500e6, "main_server": 700e6, "fed_server": 600e6}
"""Memory of one role process with a tiny preset, beyond the model weights:
interpreter, imported libraries, data shard, gRPC buffers. Measured on the
2-core development machine: a client holds about 490 MB RSS (360 MB PSS), and
48 clients of the default scenario used 23.6 GB in all."""

MODEL_COPIES = {"client": 2.0, "main_server": 4.0, "fed_server": 2.0}
"""Base-weight copies each role holds at its peak: the whole base is built
before the split keeps one part, and the main server also holds the server
LoRA's optimizer state and the activations of every stream."""

FLOAT32_BYTES = 4
SKIP_FLAG = "--skip-memory-check"


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """What a run of K clients is expected to need, in bytes."""

    num_clients: int
    per_client_bytes: float
    servers_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.servers_bytes + self.num_clients * self.per_client_bytes

    def describe(self) -> str:
        return (
            f"about {self.total_bytes / GIB:.1f} GiB ({self.num_clients} clients x "
            f"{self.per_client_bytes / 1e6:.0f} MB + servers {self.servers_bytes / 1e6:.0f} MB)"
        )


def estimate_memory(num_clients: int, base_params: int) -> MemoryEstimate:
    """The estimate for `num_clients` clients over a base of `base_params` parameters."""
    weights = base_params * FLOAT32_BYTES

    def role(name: str) -> float:
        return PROCESS_OVERHEAD_BYTES[name] + MODEL_COPIES[name] * weights

    return MemoryEstimate(
        num_clients=num_clients,
        per_client_bytes=role("client"),
        servers_bytes=role("main_server") + role("fed_server"),
    )


def scenario_memory(scenario: Any) -> MemoryEstimate:
    """`estimate_memory` for a scenario, its base counted from the real model config."""
    from fedsllm.model.counts import count_scenario

    counts = count_scenario(scenario)
    base_params = counts.client_params + counts.server_params
    return estimate_memory(scenario.clients.num_clients, base_params)


def available_memory_bytes(meminfo: str | Path = "/proc/meminfo") -> float | None:
    """MemAvailable (what the kernel can hand out without swapping), or None if unknown."""
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return None


def check_memory(estimate: MemoryEstimate, available_bytes: float | None) -> None:
    """Refuse (ConfigError on --clients) a run whose estimate exceeds available memory."""
    if available_bytes is None or estimate.total_bytes <= available_bytes:
        return
    raise ConfigError(
        "--clients",
        estimate.num_clients,
        f"the run needs {estimate.describe()} but only {available_bytes / GIB:.1f} GiB "
        f"is available; use fewer clients, or pass {SKIP_FLAG} to start it anyway",
    )
