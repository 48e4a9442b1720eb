"""One scenario file (TOML) -> one validated, frozen `ScenarioConfig`.

Every knob of a run lives here, one dataclass per concern. Each field's
docstring gives its unit and what sentinel values mean. Checks on one field
sit in the sub-config's ``__post_init__``; checks across fields sit in
``ScenarioConfig.__post_init__``. The loader rejects unknown keys and wrong
types, so a scenario that loads is valid and nothing downstream checks it
again. Errors are `ConfigError` with the dotted path of the field.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fedsllm.errors import ConfigError

MODEL_PRESETS = ("tiny-llama", "tiny-gpt2", "gpt2-small")
WIRE_DTYPES = ("float32", "bfloat16", "float16")
DATA_SOURCES = ("e2e", "jsonl", "text")
PARTITIONS = ("iid", "dirichlet")
SERVER_UPDATES = ("per_batch", "wave")
POLICIES = (
    "fixed_steps",
    "optimal",
    "equal",
    "equal_opt_eta",
    "opt_fixed_eta",
    "proportional",
    "random",
    "fixed",
)
SOLVERS = ("exact", "cvxpy")
LINK_BACKENDS = ("none", "token", "tc")
NETWORKS = ("loopback", "netns")
RESTART_POLICIES = ("never", "on-failure")
PLACEMENTS = ("disc", "square")
FADINGS = ("none", "rayleigh")

_frozen = dataclass(frozen=True, kw_only=True, slots=True)


def _check(ok: bool, path: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(path, value, reason)


def _one_of(path: str, value: Any, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, path, value, f"must be one of {', '.join(allowed)}")


def _positive(path: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, path, value, "must be > 0")


def _non_negative(path: str, value: float) -> None:
    _check(math.isfinite(value) and value >= 0, path, value, "must be >= 0")


@_frozen
class ModelConfig:
    preset: str = "tiny-llama"
    """Built-in architecture built from config with random init: tiny-llama,
    tiny-gpt2 (d=64, 4 blocks) or gpt2-small (124M, for timing studies).
    Ignored when `path` is set."""
    path: str = ""
    """Local Hugging Face checkpoint directory; empty = build `preset`."""
    pretrain_steps: int = 200
    """Steps of base pretraining on generated generic text before fine-tuning,
    for presets only (a random frozen base leaves LoRA little to adapt).
    The result is cached on disk by config hash. 0 = use the random base."""
    pretrain_lr: float = 3e-3
    """Learning rate of the base pretraining (AdamW)."""
    attn_implementation: str = "sdpa"
    """transformers attention kernel: sdpa or eager."""

    def __post_init__(self) -> None:
        if not self.path:
            _one_of("model.preset", self.preset, MODEL_PRESETS)
        _non_negative("model.pretrain_steps", self.pretrain_steps)
        _positive("model.pretrain_lr", self.pretrain_lr)
        _one_of("model.attn_implementation", self.attn_implementation, ("sdpa", "eager"))


@_frozen
class SplitConfig:
    split_layer: int = 2
    """The client holds the embeddings and blocks [0, split_layer); the main
    server holds the rest, the final norm and the LM head."""
    wire_dtype: str = "float32"
    """Precision of smashed activations and gradients on the wire."""

    def __post_init__(self) -> None:
        _check(self.split_layer >= 1, "split.split_layer", self.split_layer, "must be >= 1")
        _one_of("split.wire_dtype", self.wire_dtype, WIRE_DTYPES)


@_frozen
class AdapterConfig:
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    dropout: float = 0.0
    """LoRA dropout probability."""
    target_modules: tuple[str, ...] = ()
    """Module names to adapt; empty = the family default (Llama: q_proj,
    v_proj; GPT-2: c_attn)."""

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "adapter.rank", self.rank, "must be >= 1")
        _positive("adapter.alpha", self.alpha)
        _check(0 <= self.dropout < 1, "adapter.dropout", self.dropout, "must be in [0, 1)")


@_frozen
class DataConfig:
    source: str = "e2e"
    """e2e = built-in restaurant data-to-text generator; jsonl or text = user
    file at `path`."""
    path: str = ""
    """User data file (JSONL with a "text" field, or plain text, one sample
    per line); required when source is jsonl or text."""
    num_train_samples: int = 2000
    """Training samples in all (generator), split across clients."""
    num_val_samples: int = 128
    """Held-out validation samples."""
    seq_len: int = 256
    """Tokens per sample after truncation/padding."""
    partition: str = "iid"
    """iid, or dirichlet (non-IID over the restaurant attributes)."""
    dirichlet_alpha: float = 0.5
    """Concentration of the Dirichlet partition; smaller = more skewed."""
    client_fractions: tuple[float, ...] = ()
    """Per-client share of the training samples (normalized); empty = equal."""

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, DATA_SOURCES)
        if self.source != "e2e":
            _check(bool(self.path), "data.path", self.path, f"required for source {self.source}")
        _check(
            self.num_train_samples >= 1,
            "data.num_train_samples",
            self.num_train_samples,
            "must be >= 1",
        )
        _check(
            self.num_val_samples >= 1, "data.num_val_samples", self.num_val_samples, "must be >= 1"
        )
        _check(self.seq_len >= 8, "data.seq_len", self.seq_len, "must be >= 8")
        _one_of("data.partition", self.partition, PARTITIONS)
        _positive("data.dirichlet_alpha", self.dirichlet_alpha)
        for i, frac in enumerate(self.client_fractions):
            _positive(f"data.client_fractions[{i}]", frac)


@_frozen
class TrainingConfig:
    batch_size: int = 8
    """Minibatch size beta of one local iteration."""
    num_rounds: int = 3
    """Global rounds R (policy fixed_steps; otherwise the policy's N may cap it)."""
    num_local_steps: int = 10
    """Local iterations n per round (policy fixed_steps)."""
    client_lr: float = 2e-3
    """AdamW learning rate of the client-side LoRA."""
    server_lr: float = 2e-3
    """AdamW learning rate of the server-side LoRA."""
    server_update: str = "per_batch"
    """per_batch = one server optimizer step per client batch (serialized);
    wave = one averaged step per wave of client batches (docs/MODEL.md section 1)."""
    max_wave_batches: int = 4
    """Wave mode: most client batches the main server fuses into one forward and
    backward; a wave of more takes several passes, with the same update. On
    this 2-core CPU a fused pass costs more per batch as it grows (large
    logits), so the cap keeps a pass near per_batch's cost per step
    (benchmarks/scale.py; README "Many clients on one machine")."""
    num_val_batches: int = 4
    """Validation batches evaluated after a round."""
    eval_every: int = 1
    """Evaluate after every this many rounds (the last round always is)."""
    target_val_loss: float = 0.0
    """Validation loss that counts as "trained" for time-to-target figures
    (fedsllm compare, fedsllm calibrate); 0 = none."""
    round_deadline_s: float = 0.0
    """Seconds the fed server waits for client adapters; 0 = wait for all."""
    min_clients: int = 1
    """Adapters needed to aggregate once the deadline passes."""

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "num_rounds",
            "num_local_steps",
            "num_val_batches",
            "min_clients",
            "max_wave_batches",
            "eval_every",
        ):
            value = getattr(self, name)
            _check(value >= 1, f"training.{name}", value, "must be >= 1")
        _positive("training.client_lr", self.client_lr)
        _positive("training.server_lr", self.server_lr)
        _one_of("training.server_update", self.server_update, SERVER_UPDATES)
        _non_negative("training.round_deadline_s", self.round_deadline_s)
        _non_negative("training.target_val_loss", self.target_val_loss)


@_frozen
class ClientProfile:
    flops: float = 0.0
    """Emulated compute speed f_k in FLOP/s; 0 = devices.client_flops."""
    tx_power_dbm: float = math.nan
    """Transmit power p_k in dBm; NaN = channel.tx_power_dbm."""
    distance_m: float = 0.0
    """Distance to the base station in metres; 0 = random placement."""
    gain_db: float = math.nan
    """Fixed channel gain g_k in dB (overrides path loss and shadowing);
    NaN = from placement."""

    def __post_init__(self) -> None:
        _non_negative("flops", self.flops)
        _non_negative("distance_m", self.distance_m)


@_frozen
class ClientsConfig:
    num_clients: int = 3
    """Number of clients K."""
    profiles: tuple[ClientProfile, ...] = ()
    """Per-client overrides; empty = every client takes the defaults, else
    exactly num_clients entries."""

    def __post_init__(self) -> None:
        _check(self.num_clients >= 1, "clients.num_clients", self.num_clients, "must be >= 1")


@_frozen
class ChannelConfig:
    bandwidth_hz: float = 20e6
    """Total uplink bandwidth B shared by FDMA, Hz."""
    noise_psd_dbm_per_hz: float = -174.0
    """Noise power spectral density N0, dBm/Hz."""
    tx_power_dbm: float = 10.0
    """Default transmit power p_k, dBm."""
    cell_radius_m: float = 500.0
    """Clients are placed uniformly in a disc (or square of this half-side)."""
    min_distance_m: float = 10.0
    """Closest placement to the base station, metres."""
    placement: str = "disc"
    """disc or square."""
    path_loss_intercept_db: float = 128.1
    """Path loss at 1 km, dB (128.1 + 37.6 log10(d/km))."""
    path_loss_slope_db: float = 37.6
    """Path loss per decade of distance, dB."""
    shadowing_std_db: float = 8.0
    """Log-normal shadowing standard deviation, dB; 0 = none."""
    fading: str = "none"
    """none, or rayleigh (re-drawn every round, seeded)."""
    downlink_bps: float = 0.0
    """Per-client downlink rate R_dl, bit/s; 0 = unlimited (paper default)."""

    def __post_init__(self) -> None:
        _positive("channel.bandwidth_hz", self.bandwidth_hz)
        _positive("channel.cell_radius_m", self.cell_radius_m)
        _positive("channel.min_distance_m", self.min_distance_m)
        _check(
            self.min_distance_m < self.cell_radius_m,
            "channel.min_distance_m",
            self.min_distance_m,
            "must be < channel.cell_radius_m",
        )
        _one_of("channel.placement", self.placement, PLACEMENTS)
        _non_negative("channel.shadowing_std_db", self.shadowing_std_db)
        _one_of("channel.fading", self.fading, FADINGS)
        _non_negative("channel.downlink_bps", self.downlink_bps)


@_frozen
class DevicesConfig:
    client_flops: float = 2e9
    """Default emulated client compute speed f_k, FLOP/s."""
    server_flops: float = 20e9
    """Emulated main-server compute speed f_S, FLOP/s."""
    aggregation_s: float = 0.0
    """Modelled aggregation time t_agg per round, seconds."""

    def __post_init__(self) -> None:
        _positive("devices.client_flops", self.client_flops)
        _positive("devices.server_flops", self.server_flops)
        _non_negative("devices.aggregation_s", self.aggregation_s)


@_frozen
class ConvergenceConfig:
    a: float = 4.0
    """Rounds constant: N(eta) = a / (1 - eta) (docs/MODEL.md section 4)."""
    v: float = 6.0
    """Local-iteration constant: n(eta) = v * log2(1 / eta)."""

    def __post_init__(self) -> None:
        _positive("convergence.a", self.a)
        _positive("convergence.v", self.v)


@_frozen
class PolicyConfig:
    name: str = "fixed_steps"
    """fixed_steps = training.num_rounds x training.num_local_steps, no
    controller; otherwise an allocation policy of docs/MODEL.md section 5."""
    solver: str = "exact"
    """exact (Lambert W lemma) or cvxpy (Clarabel)."""
    fixed_eta: float = 0.5
    """eta of the fixed-eta policies (the unoptimized case uses 0.5)."""
    shares_file: str = ""
    """JSON list of bandwidth fractions for policy fixed."""
    num_random_draws: int = 20
    """Dirichlet draws averaged by policy random."""
    max_rounds: int = 0
    """Run at most this many of the plan's N rounds (`fedsllm run --rounds` under
    an allocation policy); 0 = all N."""

    def __post_init__(self) -> None:
        _one_of("policy.name", self.name, POLICIES)
        _one_of("policy.solver", self.solver, SOLVERS)
        _check(0 < self.fixed_eta < 1, "policy.fixed_eta", self.fixed_eta, "must be in (0, 1)")
        if self.name == "fixed":
            _check(
                bool(self.shares_file),
                "policy.shares_file",
                self.shares_file,
                "required for policy fixed",
            )
        _check(
            self.num_random_draws >= 1,
            "policy.num_random_draws",
            self.num_random_draws,
            "must be >= 1",
        )


@_frozen
class LinkConfig:
    backend: str = "none"
    """none = unshaped loopback; token = in-process pacing; tc = kernel
    shaping (needs network = netns or containers)."""
    time_dilation: float = 1.0
    """Stretches every emulated duration (links and compute); reports divide
    it back out."""
    propagation_delay_s: float = 0.0
    """One-way propagation delay added per transfer, seconds."""
    chunk_bytes: int = 262144
    """Tensor stream chunk size, bytes (pacing granularity)."""
    emulate_compute: bool = False
    """Pad compute steps to FLOPs / device speed."""

    def __post_init__(self) -> None:
        _one_of("link.backend", self.backend, LINK_BACKENDS)
        _positive("link.time_dilation", self.time_dilation)
        _non_negative("link.propagation_delay_s", self.propagation_delay_s)
        _check(
            4096 <= self.chunk_bytes <= 4 * 2**20,
            "link.chunk_bytes",
            self.chunk_bytes,
            "must be in [4096, 4194304]",
        )


@_frozen
class RunConfig:
    network: str = "loopback"
    """loopback (every role on 127.0.0.1) or netns (namespaces + veth + tc)."""
    host: str = "127.0.0.1"
    """Address the servers bind and clients dial in loopback mode."""
    num_threads: int = 1
    """torch intra-op threads of each client process."""
    server_threads: int = 2
    """torch intra-op threads of the main server, which computes for every client
    (one worker thread takes their steps in turn), while clients mostly wait on
    their links."""
    startup_timeout_s: float = 120.0
    """How long the launcher waits for a server to report healthy."""
    fed_address: str = ""
    """host:port of the fed server, for roles started on their own hosts (after
    --fed-address and FEDSLLM_FED_ADDRESS; the launcher passes its own)."""
    control_address: str = ""
    """host:port of the fed server's control port (telemetry, controller);
    default: the fed server's address."""
    main_address: str = ""
    """host:port of the main server: where clients dial and, unless --bind or
    FEDSLLM_MAIN_BIND says otherwise, where the main server binds."""
    tls: bool = False
    """Mutual TLS on every channel: the launcher issues a per-run CA and one
    certificate per role (fedsllm run --tls). Roles started by hand name their
    files with --tls-ca/--tls-cert/--tls-key or FEDSLLM_TLS_*."""
    insecure: bool = False
    """Allow plain gRPC on a non-loopback address (--insecure; warned about in
    the log and the report). Loopback runs are plain by default."""
    restart: str = "never"
    """What the launcher does when a role dies while clients still run (fedsllm run
    --restart): never (the run stops, as any non-zero exit did) or on-failure
    (started again with the same arguments, like compose's restart policy; a
    client that exits 0 is done). Launcher-only: not part of the scenario hash."""
    max_restarts: int = 3
    """on-failure: how many times one role may be restarted by the launcher before
    its death stops the run (restarts a fault asks for are not counted)."""
    restart_backoff_s: float = 1.0
    """on-failure: wait before the first restart of a role; doubled for each
    further restart of the same role, at most 10x (wall seconds)."""
    faults: str = ""
    """Faults to inject (fedsllm run --faults; grammar in fedsllm/faults/spec.py),
    e.g. "kill:client_1@round=3;restart=2s"; empty: none. Launcher-only: not part
    of the scenario hash. Link outages need run.network = netns."""

    def __post_init__(self) -> None:
        _one_of("run.network", self.network, NETWORKS)
        _one_of("run.restart", self.restart, RESTART_POLICIES)
        _check(self.max_restarts >= 0, "run.max_restarts", self.max_restarts, "must be >= 0")
        _non_negative("run.restart_backoff_s", self.restart_backoff_s)
        for name in ("fed_address", "control_address", "main_address"):
            value = getattr(self, name)
            _check(
                not value or (":" in value and value.rpartition(":")[2].isdigit()),
                f"run.{name}",
                value,
                "must be host:port",
            )
        _check(self.num_threads >= 1, "run.num_threads", self.num_threads, "must be >= 1")
        _check(self.server_threads >= 1, "run.server_threads", self.server_threads, "must be >= 1")
        _positive("run.startup_timeout_s", self.startup_timeout_s)


@_frozen
class ScenarioConfig:
    name: str = "default"
    """Label used in reports and run directory names."""
    seed: int = 0
    """Seeds data, placement, fading, init and batching."""
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # numpy's generators take no negative seed, torch's none of 2**64 or
        # more; the seed is also offset per client and per round.
        _check(0 <= self.seed < 2**63, "seed", self.seed, "must be in [0, 2**63)")
        k = self.clients.num_clients
        _check(
            len(self.clients.profiles) in (0, k),
            "clients.profiles",
            len(self.clients.profiles),
            f"must list 0 or clients.num_clients={k} entries",
        )
        _check(
            len(self.data.client_fractions) in (0, k),
            "data.client_fractions",
            len(self.data.client_fractions),
            f"must list 0 or clients.num_clients={k} entries",
        )
        _check(
            k <= self.data.num_train_samples,
            "clients.num_clients",
            k,
            f"must be <= data.num_train_samples={self.data.num_train_samples}",
        )
        _check(
            self.training.min_clients <= k,
            "training.min_clients",
            self.training.min_clients,
            f"must be <= clients.num_clients={k}",
        )
        if self.link.backend == "tc":
            _check(
                self.run.network == "netns",
                "link.backend",
                self.link.backend,
                "tc needs run.network = netns",
            )
        check_faults(self.run.faults, k, self.run.network, "run.faults")

    def profile(self, client_id: int) -> ClientProfile:
        """The resolved profile of client `client_id` (defaults filled in)."""
        base = self.clients.profiles[client_id] if self.clients.profiles else ClientProfile()
        return dataclasses.replace(
            base,
            flops=base.flops or self.devices.client_flops,
            tx_power_dbm=(
                self.channel.tx_power_dbm if math.isnan(base.tx_power_dbm) else base.tx_power_dbm
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists, NaN kept) that `from_dict` reads back."""
        return _to_plain(self)


def check_faults(spec: str, num_clients: int, network: str, path: str) -> list[Any]:
    """The faults of `spec` (fedsllm.faults.parse_faults), or ConfigError naming `path`:
    a malformed fault, a client that does not exist, or a link outage on loopback,
    where a role's links cannot be cut without cutting every role's (run.network =
    netns gives each role its own link)."""
    from fedsllm.faults import parse_faults

    try:
        faults = parse_faults(spec, num_clients)
    except ConfigError as err:
        raise ConfigError(path, err.value, err.reason) from None
    for fault in faults:
        if fault.kind == "outage" and network != "netns":
            raise ConfigError(
                path,
                fault.text(),
                "a link outage needs run.network = netns (--network netns): on loopback "
                "every role shares one link",
            )
    return faults


# ---------------------------------------------------------------- loading


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    return obj


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against annotation `tp` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), path or "<root>", value, "must be a table")
        return _build(tp, value, path)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        _check(isinstance(value, list | tuple), path, value, "must be a list")
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        _check(isinstance(value, bool), path, value, "must be true or false")
        return value
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            path,
            value,
            "must be an integer",
        )
        return value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, path, value, "must be a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), path, value, "must be a string")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in the schema yet
        raise TypeError(f"unsupported annotation {tp} at {path}")
    raise TypeError(f"unsupported annotation {tp} at {path}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in data:
        _check(
            key in names,
            f"{prefix}{key}",
            data[key],
            f"unknown field (known: {', '.join(sorted(names))})",
        )
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # Sub-configs inside lists only know their own field name.
        if path and not err.path.startswith(path.split("[")[0]):
            raise ConfigError(f"{prefix}{err.path}", err.value, err.reason) from None
        raise


def from_dict(data: dict[str, Any]) -> ScenarioConfig:
    """Validate a nested dict (from TOML or `to_dict`) into a ScenarioConfig."""
    return _build(ScenarioConfig, data, "")


def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set model.preset=tiny-gpt2


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` assignments (TOML values) to a nested dict.

    Returns a new dict; unknown paths are caught later by `from_dict`.
    """
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        _check(bool(sep) and bool(key), "--set", item, "must look like section.field=value")
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            _check(isinstance(node, dict), key, item, f"{part} is not a table")
        node[parts[-1]] = _parse_override_value(raw.strip())
    return result


def default_scenario_path() -> Path:
    """The built-in default scenario shipped inside the package."""
    return Path(str(resources.files("fedsllm") / "scenarios" / "default.toml"))


@contextmanager
def reading(field: str, source: Path, kind: str) -> Iterator[None]:
    """Around reading and parsing the file `source` that `field` (a flag or
    field) names: every way it can fail to read (missing, a directory,
    unreadable, not UTF-8) is one ConfigError naming `field`, so each reader
    of a scenario file says the same thing and no caller wraps OSError."""
    try:
        yield
    except FileNotFoundError:
        raise ConfigError(field, str(source), "file not found") from None
    except IsADirectoryError:
        raise ConfigError(field, str(source), f"is a directory, not a {kind} file") from None
    except OSError as err:  # permission denied, an unreadable device, ...
        reason = err.strerror or type(err).__name__
        raise ConfigError(field, str(source), f"cannot be read ({reason})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            field, str(source), f"not valid {kind} (not UTF-8 text: {err.reason})"
        ) from None


def load_dict(path: str | Path | None, field: str = "--scenario") -> dict[str, Any]:
    """Read a scenario TOML file (None = the built-in default) as a dict; errors
    name `field`, the flag or variable that gave the file."""
    source = Path(path) if path else default_scenario_path()
    with reading(field, source, "TOML"):
        try:
            with open(source, "rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(field, str(source), f"not valid TOML ({err})") from None


def load_scenario(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    evaluated: Collection[str] | None = None,
) -> ScenarioConfig:
    """Load, override and validate a scenario; the one entry point for configs.

    Explicit overrides of fields the scenario's policy ignores are refused
    (`check_overrides_apply`), and of policy parameters that none of the
    `evaluated` policies reads (`check_parameters_read`; default: the
    scenario's own policy, as a run has); the same values written in the file
    are not, since a file may serve several policies.
    """
    scenario = from_dict(apply_overrides(load_dict(path), overrides or []))
    check_overrides_apply(overrides or [], scenario.policy.name)
    check_parameters_read(overrides or [], evaluated or (scenario.policy.name,))
    return scenario


def policy_name_of(path: str | Path | None, overrides: list[str]) -> Any:
    """policy.name once `overrides` apply to the file (not validated: the loader does that).

    The flag mapper needs it before loading, to know what --rounds means.
    """
    data = apply_overrides(load_dict(path), overrides)
    policy = data.get("policy", {})
    return policy.get("name", PolicyConfig().name) if isinstance(policy, dict) else None


def _planning_only(policy: str) -> bool:
    return policy != "fixed_steps"


POLICY_BOUND_FIELDS: dict[str, tuple[Callable[[str], bool], str]] = {
    "training.num_rounds": (
        _planning_only,
        "is ignored by policy {policy}, whose plan decides the rounds; set "
        "policy.max_rounds={value} (run --rounds / compare --rounds) to run the first "
        "{value} rounds of the plan, or policy.name='fixed_steps' to run exactly {value}",
    ),
    "training.num_local_steps": (
        _planning_only,
        "is ignored by policy {policy}, whose plan decides the local steps (n from its "
        "eta); set policy.name='fixed_steps' to fix them",
    ),
    "policy.max_rounds": (
        lambda policy: not _planning_only(policy),
        "is ignored by policy {policy}, which has no plan to cut short; set "
        "training.num_rounds={value} instead",
    ),
}
"""Fields that only some policies read -> (is it ignored under this policy?, the reason,
which names the field that does apply). An override of one of them that the policy
would silently drop is refused instead."""

POLICY_PARAMETERS: dict[str, frozenset[str]] = {
    "policy.fixed_eta": frozenset({"equal", "opt_fixed_eta"}),
    "policy.shares_file": frozenset({"fixed"}),
    "policy.num_random_draws": frozenset({"random"}),
    "policy.solver": frozenset({"optimal", "opt_fixed_eta"}),
}
"""A policy's own parameters -> the policies that read them (fed_server.controller,
fedsllm.delay.policies.solve_policy). Unlike POLICY_BOUND_FIELDS, which must apply to
every run of a comparison, a parameter is refused only when no policy the command
evaluates reads it: `fedsllm plan` evaluates them all, so policy.fixed_eta sets its
equal baseline whatever the scenario's own policy."""


def _override_paths(overrides: list[str]) -> list[tuple[str, Any]]:
    """(dotted path, value) of every leaf an override sets: `training={num_rounds=3}`
    sets training.num_rounds just as `training.num_rounds=3` does."""
    out: list[tuple[str, Any]] = []

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{path}.{key}" if path else str(key), sub)
        else:
            out.append((path, value))

    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep:
            walk(key.strip(), _parse_override_value(raw.strip()))
    return out


def check_overrides_not_owned(overrides: list[str], owned: Mapping[str, str]) -> None:
    """Refuse an explicit override of a field that a command sets itself
    (`owned`: field -> what sets it), which it would otherwise drop in silence."""
    for path, value in _override_paths(overrides):
        for field_path, owner in owned.items():
            if path == field_path or path.startswith(f"{field_path}."):
                raise ConfigError(path, value, f"is set by {owner}, not by --set")


def check_overrides_apply(overrides: list[str], policy: str) -> None:
    """Refuse an explicit override (--set or a flag) that `policy` would ignore.

    A run that silently drops `--set training.num_rounds=3` runs the whole plan
    instead of 3 rounds; the error names the field that does apply.
    """
    for path, value in _override_paths(overrides):
        bound = POLICY_BOUND_FIELDS.get(path)
        if bound is not None and bound[0](policy):
            raise ConfigError(path, value, bound[1].format(policy=policy, value=value))


def check_parameters_read(overrides: list[str], policies: Collection[str]) -> None:
    """Refuse an explicit override of a policy parameter (POLICY_PARAMETERS) that none
    of `policies`, the ones the command runs or evaluates, reads: `--set
    policy.shares_file=...` under policy optimal would otherwise be dropped in
    silence."""
    for path, value in _override_paths(overrides):
        readers = POLICY_PARAMETERS.get(path)
        if readers is not None and not readers & set(policies):
            raise ConfigError(
                path,
                value,
                f"is read only by policy {' and '.join(sorted(readers))}, not by "
                f"{', '.join(sorted(set(policies)))}; set policy.name to use it",
            )
