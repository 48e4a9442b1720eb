"""Will a run fit in this machine's memory? An estimate made before anything starts.

Every role is its own OS process that builds the whole base model before
keeping its part. The servers import torch, transformers, peft and grpc each;
the clients of a loopback run are forked from one client host that imported
them once (client/host.py), so a client adds only its own heap: memory still
grows linearly with the number of clients, at about a fifth of the old slope.
Starting more clients than fit drives the machine into the OOM killer, which
takes the user's other work with it; `fedsllm run` and `fedsllm compare`
therefore refuse such a run up front, naming the estimate and the flag that overrides the check.

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

PROCESS_OVERHEAD_BYTES = {
    "client": 100e6,
    "client_host": 450e6,
    "client_process": 500e6,
    "main_server": 700e6,
    "fed_server": 600e6,
}
"""Memory (PSS) of one role process with a tiny preset, beyond the model weights:
interpreter, imported libraries, data shard, gRPC buffers. A client is a fork
of the client host, so its figure is the marginal PSS of one more client (its
heap, its shard, its channels and threads, its share of the host's pages),
measured with benchmarks/scale.py on the 2-core development machine: 86 MB at
K = 32 and 84 MB at K = 100 (was 360 MB PSS per separately started client;
48 of those used 23.6 GB). The host holds the imported libraries once.
"client_process" is a client started on its own (network namespaces, where
each client needs its own `ip netns exec`): about 490 MB RSS, 360 MB PSS."""

MODEL_COPIES = {
    "client": 2.0,
    "client_host": 2.0,
    "client_process": 2.0,
    "main_server": 4.0,
    "fed_server": 2.0,
}
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


def estimate_memory(num_clients: int, base_params: int, forked: bool = True) -> MemoryEstimate:
    """The estimate for `num_clients` clients over a base of `base_params` parameters,
    the clients forked from a client host (`forked`) or each started on its own."""
    weights = base_params * FLOAT32_BYTES

    def role(name: str) -> float:
        return PROCESS_OVERHEAD_BYTES[name] + MODEL_COPIES[name] * weights

    return MemoryEstimate(
        num_clients=num_clients,
        per_client_bytes=role("client" if forked else "client_process"),
        servers_bytes=(
            role("main_server") + role("fed_server") + (role("client_host") if forked else 0.0)
        ),
    )


def scenario_memory(scenario: Any) -> MemoryEstimate:
    """`estimate_memory` for a scenario, its base counted from the real model config."""
    from fedsllm.model.counts import count_scenario

    counts = count_scenario(scenario)
    base_params = counts.client_params + counts.server_params
    # Clients in network namespaces are started one by one (fedsllm.launch).
    forked = scenario.run.network != "netns"
    return estimate_memory(scenario.clients.num_clients, base_params, forked)


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
