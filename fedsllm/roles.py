"""Start-up helpers shared by the three role processes (no role logic here)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from fedsllm.config import ScenarioConfig, from_dict, reading
from fedsllm.errors import NO_VALUE, ConfigError, ReconnectError
from fedsllm.state.errors import StoreFormatError

log = logging.getLogger(__name__)

ROLE_STOP = threading.Event()
"""Set once this process was asked to stop (SIGTERM or SIGINT, after
`wait_for_stop` installed its handlers). Every wait that can last (link and
device pacing, a handler waiting on a step) waits on it instead of sleeping,
so a stopping role is never held by a sleep. Never cleared: a process stops once."""


class RoleStopping(RuntimeError):
    """A wait was cut short because the role is stopping (ROLE_STOP is set)."""


def sleep_unless_stopped(seconds: float) -> None:
    """time.sleep(seconds), cut short when the role is asked to stop."""
    if seconds > 0:
        ROLE_STOP.wait(seconds)


def role_main(logger: logging.Logger) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """The exit rule of every role's main (decorate it): a bad setting, a
    fedsllm.bootstrap.SettingError or any ConfigError raised anywhere in it, is
    logged on `logger` as its one-line message and the role exits 2, with no
    traceback. The helpers below raise SettingError for what the user gave
    badly: a flag or variable (resolve), a bind address in use (`binding`), a
    credential a server refused (`refused_credentials`), a certificate of
    another identity (`check_own_certificate`), a fed server that never
    answers (`wait_for_fed_server`). A state file of the role's own store that
    it cannot read (fedsllm.state.StoreFormatError: damaged, or another
    version's) is bad input too: one line naming the file, exit 2. A peer that
    stays unreachable through a whole reconnect budget mid-run (ReconnectError)
    is one line too, exit 1: a failure of the run, not of the input. Anything
    else propagates."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            from fedsllm.paths import remove_made_dirs

            try:
                code = main(*args, **kwargs)
            except (ConfigError, StoreFormatError) as err:  # SettingError included
                logger.error("%s", err)
                code = 2
            except ReconnectError as err:  # a peer gone for good mid-run: not bad input
                logger.error("%s", err)
                return 1
            if code == 2:  # refused input leaves no directory it made behind
                remove_made_dirs()
            return code

        return run

    return decorate


@contextmanager
def binding(source: str, address: str) -> Iterator[None]:
    """Around a server's create_server on `address`, which the flag, variable or
    field `source` named: a bind that fails (fedsllm.wire.rpc.BindError) is a
    SettingError naming `source`, e.g. "--bind: address in use, got '0.0.0.0:50051'"."""
    from fedsllm.bootstrap import SettingError
    from fedsllm.wire.rpc import BindError

    try:
        yield
    except BindError as err:
        raise SettingError(source, address, err.reason) from None


def bindable(setting: Any) -> str:
    """The address of a resolved bind setting (fedsllm.bootstrap.Setting),
    checked before anything starts: one this host cannot bind now (in use, not
    one of its addresses, a privileged port) is a SettingError naming the
    setting's source. `binding` still covers a bind that fails later."""
    from fedsllm.bootstrap import SettingError
    from fedsllm.wire.rpc import bind_problem

    problem = bind_problem(setting.value)
    if problem is not None:
        raise SettingError(setting.source, setting.value, problem)
    return str(setting.value)


def credential_error(err: BaseException, security: Any, peer: str) -> Any:
    """The SettingError for a call that `peer` ("the fed server at HOST:PORT")
    refused for this process's credentials (UNAUTHENTICATED: none, or unknown;
    PERMISSION_DENIED: another role's), naming where the credential came from
    (--tls-cert, FEDSLLM_TOKEN, FEDSLLM_TOKEN_FILE, ...: never the token
    itself) and what to give instead; None for any other error."""
    import grpc

    from fedsllm.bootstrap import SettingError
    from fedsllm.wire.rpc import NO_SECURITY, TOKEN_ENV, TOKEN_FILE_ENV
    from fedsllm.wire.status import status_code, status_details

    code = status_code(err)
    if code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return None
    security = NO_SECURITY if security is None else security
    status = f"{code.name}: {status_details(err) or 'no details'}"
    source, path = security.credential()
    if not source:
        return SettingError(
            TOKEN_ENV,
            NO_VALUE,
            f"not set, and {peer} refuses a role without credentials ({status}); give this "
            f"role's token ({TOKEN_FILE_ENV} or {TOKEN_ENV}) or its TLS files "
            "(--tls-ca/--tls-cert/--tls-key)",
        )
    if "no credentials configured" in status:
        hint = "that server has no credentials configured (FEDSLLM_PEER_TOKENS or TLS files)"
    elif security.tls is not None:
        hint = (
            "give this role's own certificate and key, issued by the run's CA "
            "(fedsllm certs DIR: DIR/<role>.pem)"
        )
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        hint = "it is another role's token: give this role's own"
    else:
        hint = "that server does not know this token: give this role's, as its peer tokens list it"
    return SettingError(source, path or NO_VALUE, f"{peer} refused it ({status}); {hint}")


@contextmanager
def refused_credentials(security: Any, peer: str) -> Iterator[None]:
    """Around a role's calls to `peer` (its first ones above all: run info,
    the base, Join): a refusal of this process's credentials is the
    SettingError of `credential_error` (exit 2 naming the credential); every
    other error propagates unchanged."""
    try:
        yield
    except Exception as err:
        setting = credential_error(err, security, peer)
        if setting is None:
            raise
        raise setting from None


def check_own_certificate(security: Any, expected: Any, said_by: str = "") -> None:
    """Before connecting: this process's certificate (when it has TLS) must
    name `expected` (fedsllm.security.identity.Identity) in its URI SAN, else
    a SettingError naming the certificate's flag or variable (and `said_by`,
    what set the expected identity, e.g. "--client-id 0")."""
    from fedsllm.bootstrap import SettingError

    if security is None or security.tls is None or security.tls.identity == expected:
        return
    source, path = security.credential()
    by = f" ({said_by})" if said_by else ""
    raise SettingError(
        source,
        path or NO_VALUE,
        f"is the certificate of {security.tls.identity}, but this role is {expected}{by}; "
        f"give {expected}'s ({expected.file_stem}.pem and .key of fedsllm certs)",
    )


def wait_for_fed_server(
    address: str, security: Any, timeout_s: float, source: str = "--fed-address"
) -> None:
    """Wait until the fed server at `address` serves (it may still be coming
    up), saying at WARNING why while it does not. When the wait ends without
    it, a SettingError: a TLS handshake that still fails names this role's CA
    (--tls-ca or where it came from); any other silence names `source`, the
    flag that gave the address, with gRPC's last answer."""
    from fedsllm.bootstrap import SettingError
    from fedsllm.wire.rpc import UnreachableError, is_handshake_failure, wait_healthy

    try:
        wait_healthy(address, timeout_s, security=security, waiting_for="the fed server")
    except UnreachableError as err:
        tls = security is not None and security.tls is not None
        if not (tls and is_handshake_failure(err.details)):
            raise SettingError(
                source,
                address,
                f"the fed server did not answer for {timeout_s:.0f} s (last: {err.details}); "
                "is it up, and is this its address?",
            ) from None
        source, path = security.tls_sources[0] if security.tls_sources else ("--tls-ca", "")
        raise SettingError(
            source,
            path or NO_VALUE,
            f"the TLS handshake with the fed server at {address} failed for {timeout_s:.0f} s "
            f"({err.details}): this CA must have issued the fed server's certificate and "
            "this role's (one `fedsllm certs` directory)",
        ) from None


def role_arg_parser(
    prog: str, description: str | None, *, fed_server: bool = False
) -> argparse.ArgumentParser:
    """The arguments every role takes; each role's parse_args adds its own.

    Values left out here come from FEDSLLM_* variables, then the scenario
    (fedsllm.bootstrap.resolve); argparse defaults are None for that reason.
    """
    from fedsllm.cli import add_log_level_arg

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--scenario",
        "--scenario-json",
        dest="scenario_json",
        default=None,
        help=(
            "resolved scenario.json or scenario TOML file (or FEDSLLM_SCENARIO); required"
            if fed_server
            else "optional local scenario file (or FEDSLLM_SCENARIO): it must hash to the "
            "fed server's scenario, which is what this role runs"
        ),
    )
    if fed_server:
        parser.add_argument(
            "--run-dir",
            default=None,
            help="run directory where the whole run is assembled (or FEDSLLM_RUN_DIR)",
        )
    else:
        parser.add_argument(
            "--work-dir",
            "--run-dir",
            dest="work_dir",
            default=None,
            help="this role's private directory: telemetry spool, fetched base "
            "(or FEDSLLM_WORK_DIR)",
        )
    parser.add_argument(
        "--netns-run-id",
        default="",
        help="run id of the launcher's network namespaces (tc backend)",
    )
    add_log_level_arg(parser, "INFO")
    tls = parser.add_argument_group(
        "credentials",
        "mutual TLS files (each: the flag, else FEDSLLM_TLS_CA/CERT/KEY); without them, "
        "a bearer token from FEDSLLM_TOKEN_FILE or FEDSLLM_TOKEN, and servers accept the "
        "tokens in FEDSLLM_PEER_TOKENS (a JSON identity -> token file)",
    )
    tls.add_argument("--tls-ca", default=None, help="CA certificate every peer's is signed by")
    tls.add_argument("--tls-cert", default=None, help="this role's certificate (fedsllm certs)")
    tls.add_argument("--tls-key", default=None, help="this role's private key")
    tls.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plain gRPC on a non-loopback address (or FEDSLLM_INSECURE=1); warned about",
    )
    return parser


def role_security(args: argparse.Namespace) -> Any:
    """This process's credentials (fedsllm.wire.rpc.Security) from its flags,
    else FEDSLLM_* (fedsllm.wire.rpc.security_from_env); the role's __main__
    passes them to every server and channel it builds. Raises
    fedsllm.bootstrap.SettingError naming the source of an unusable file."""
    from fedsllm.bootstrap import SettingError
    from fedsllm.wire.rpc import security_from_env

    flags = {
        "ca": getattr(args, "tls_ca", None),
        "cert": getattr(args, "tls_cert", None),
        "key": getattr(args, "tls_key", None),
    }
    try:
        security = security_from_env(flags=flags, insecure=bool(getattr(args, "insecure", None)))
    except ConfigError as err:
        raise SettingError(err.path, err.value, err.reason) from None
    return security


def check_dial(address: str, flag: str, security: Any) -> None:
    """The insecure-address rule for a channel this role opens to `address`
    with `security` (fedsllm.wire.rpc.Security)."""
    from fedsllm.bootstrap import SettingError

    try:
        warning = security.check_bind(address)
    except ConfigError as err:
        raise SettingError(flag, address, err.reason) from None
    if warning is not None:
        log.warning("%s", warning)


def resolve_role_paths(args: argparse.Namespace, security: Any) -> tuple[str, Path]:
    """A client's or the main server's fed server address (--fed-address,
    FEDSLLM_FED_ADDRESS, or run.fed_address of a local --scenario file) and
    private work directory (--work-dir, FEDSLLM_WORK_DIR), the address checked
    against `security` (role_security). SettingError when either is missing or bad."""
    from fedsllm.bootstrap import SettingError, parse_address, parse_dir, parse_file, resolve

    local = resolve("--scenario", args.scenario_json, "FEDSLLM_SCENARIO", parse=parse_file)
    from_file = ""
    if local.value is not None:
        try:
            from_file = load_resolved_scenario(local.value, local.source)[0].run.fed_address
        except ConfigError as err:
            raise SettingError(err.path, err.value, err.reason) from None
    fed = resolve(
        "--fed-address", args.fed_address, "FEDSLLM_FED_ADDRESS", "run.fed_address", from_file,
        parse=parse_address,
    )  # fmt: skip
    if fed.value is None:
        raise SettingError(
            "--fed-address", NO_VALUE, "required (or FEDSLLM_FED_ADDRESS, or run.fed_address)"
        )
    work = resolve("--work-dir", args.work_dir, "FEDSLLM_WORK_DIR", parse=parse_dir)
    if work.value is None:
        raise SettingError("--work-dir", NO_VALUE, "required (or FEDSLLM_WORK_DIR)")
    check_dial(fed.value, "--fed-address", security)
    return fed.value, work.value


def role_start(
    args: argparse.Namespace, fed_address: str, work_dir: str, security: Any
) -> tuple[ScenarioConfig, str, Any]:
    """A client's or the main server's start: the fed server's scenario (checked
    against a local --scenario file when one is given) and its RunInfo.
    Raises fedsllm.bootstrap.SettingError for a bad or mismatched value, and
    when the fed server refuses this role's credentials."""
    from fedsllm.bootstrap import check_local_scenario, get_run_info, parse_file, resolve
    from fedsllm.wire.rpc import make_channel

    local = resolve("--scenario", args.scenario_json, "FEDSLLM_SCENARIO", parse=parse_file)
    with (
        refused_credentials(security, f"the fed server at {fed_address}"),
        make_channel(fed_address, security) as channel,
    ):
        info = get_run_info(channel)
    if local.value is not None:
        check_local_scenario(local.value, local.source, info.scenario_hash)
    return info.scenario, info.scenario_hash, info


def role_base_file(
    info: Any, fed_address: str, work_dir: Path, security: Any, retry: Any = None
) -> Path | None:
    """The base's weights fetched from the fed server into this role's work
    directory (retried on UNAVAILABLE with `retry`, see fetch_base), or None
    when this role builds the base itself. Raises
    fedsllm.bootstrap.SettingError when the fed server refuses the credentials."""
    if not info.base_bytes:
        return None
    from fedsllm.bootstrap import fetch_base
    from fedsllm.wire.rpc import make_channel

    with (
        refused_credentials(security, f"the fed server at {fed_address}"),
        make_channel(fed_address, security) as channel,
    ):
        return fetch_base(channel, work_dir, info.base_hash, retry=retry)


def load_resolved_scenario(
    path: str | Path, field: str = "--scenario"
) -> tuple[ScenarioConfig, str]:
    """Read the launcher's scenario.json, or a scenario TOML file (as docker
    compose passes it); returns the scenario and its hash, which peers compare.
    Whatever is wrong with the file (unreadable, not JSON or TOML, not a valid
    scenario) is one ConfigError naming `field`, the flag, variable or file
    that gave it, so no caller wraps it."""
    from fedsllm.config import load_dict
    from fedsllm.launch import scenario_hash

    path = Path(path)
    stored_hash: Any = None  # a TOML file carries none: it is computed
    if path.suffix == ".toml":
        doc = load_dict(path, field)
    else:
        with reading(field, path, "JSON"):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ConfigError(field, str(path), f"not valid JSON ({err})") from None
        if not isinstance(doc, dict):
            kind = type(doc).__name__
            raise ConfigError(field, str(path), f"not a scenario (a JSON {kind}, not an object)")
        stored_hash = doc.pop("scenario_hash", "")
    try:
        if stored_hash is not None and not isinstance(stored_hash, str):
            raise ConfigError("scenario_hash", stored_hash, "must be a string")
        scenario = from_dict(doc)
    except ConfigError as err:
        raise ConfigError(field, str(path), f"not a valid scenario ({err})") from None
    return scenario, scenario_hash(scenario) if stored_hash is None else stored_hash


def build_part(scenario: ScenarioConfig, side: str) -> tuple[Any, Any, Any]:
    """build_role_part without the base hash: (peft part, tokenizer, model config)."""
    part, tokenizer, config, _ = build_role_part(scenario, side)
    return part, tokenizer, config


def build_role_part(
    scenario: ScenarioConfig, side: str, base_file: Path | None = None
) -> tuple[Any, Any, Any, str]:
    """Build the base model, split it, and put LoRA on `side` ("client" or "server").

    Returns (peft-wrapped part, tokenizer, model config, base hash). The base
    comes from `base_file` (weights the fed server streamed) when given, else
    from the scenario. Every process gets identical frozen weights (the fed
    server refuses a peer whose base hash differs) and an identical initial
    adapter (seeded), so nothing but adapters and activations ever needs to
    cross the wire.
    """
    import torch

    from fedsllm.bootstrap import base_weights_hash
    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model, model_family
    from fedsllm.model.lora import apply_lora
    from fedsllm.model.split import split_model

    torch.set_num_threads(
        scenario.run.server_threads if side == "server" else scenario.run.num_threads
    )
    tokenizer = load_tokenizer(scenario)
    base = build_base_model(scenario, tokenizer.vocab_size, weights=base_file)
    base_hash = base_weights_hash(base)
    family = model_family(base)
    client_part, server_part = split_model(base, scenario.split.split_layer)
    part = client_part if side == "client" else server_part
    peft_part = apply_lora(part, scenario.adapter, family, seed=scenario.seed)
    return peft_part, tokenizer, base.config, base_hash


def client_adapter_template(scenario: ScenarioConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, numpy dtype name) of the client-side adapter this scenario's
    model has: what every client push must hold (the fed server checks each push
    against it, never against another peer's). Built on the meta device: no
    weights are allocated or loaded."""
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import model_family
    from fedsllm.model.counts import model_config_for
    from fedsllm.model.lora import adapter_state, apply_lora
    from fedsllm.model.split import split_model

    config = model_config_for(scenario)  # the architecture only: no weights are read
    if not scenario.model.path:
        from fedsllm.model.presets import scenario_preset_config

        config = scenario_preset_config(scenario, load_tokenizer(scenario).vocab_size)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_config(config)
        client_part, _ = split_model(base, scenario.split.split_layer)
        part = apply_lora(client_part, scenario.adapter, model_family(base), seed=scenario.seed)
        state = adapter_state(part)
    return {
        key: (tuple(int(d) for d in value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in state.items()
    }


def serve_base(scenario: ScenarioConfig, run_dir: Path) -> tuple[str, Path | None]:
    """The fed server's base when peers fetch it (a pretrained preset): its hash
    and the safetensors FetchBase serves (RUN_DIR/base/<hash>.safetensors);
    ("", None) when every role builds the base itself."""
    from fedsllm.bootstrap import base_is_served, base_weights_hash, save_base
    from fedsllm.data.tokenizer import load_tokenizer
    from fedsllm.model.build import build_base_model

    if not base_is_served(scenario):
        # Each role builds it (seeded init, or model.path on every host); the fed
        # server never needs the model, so the first peer's hash is the reference.
        return "", None
    base = build_base_model(scenario, load_tokenizer(scenario).vocab_size)
    base_hash = base_weights_hash(base)
    path = run_dir / "base" / f"{base_hash}.safetensors"
    if not path.is_file():
        save_base(base, path)
    return base_hash, path


def build_role_shaper(scenario: ScenarioConfig, netns_run_id: str = "") -> Any:
    """The link shaper of this process (None when links are not emulated)."""
    from fedsllm.link import build_shaper

    topology: Any = None
    if scenario.link.backend == "tc" and netns_run_id:
        from fedsllm.link.netns import NetnsTopology

        topology = NetnsTopology(netns_run_id, scenario.clients.num_clients)
    elif scenario.link.backend == "tc":
        # No launcher namespaces: a container that shapes its own interface
        # (`fedsllm compose --links tc`, set up by fedsllm.deploy.supervise --tc).
        from fedsllm.deploy.links import InterfaceTopology

        topology = InterfaceTopology(scenario.clients.num_clients)
    # Token pacing sleeps end when the role stops, so a handler pacing a slow
    # downlink cannot hold SIGTERM up.
    return build_shaper(scenario.link, topology=topology, sleep=sleep_unless_stopped)


def make_pacer(scenario: ScenarioConfig, flops_per_s: float) -> Any:
    """Device-compute emulation for this process (None when it is off)."""
    if not scenario.link.emulate_compute:
        return None
    from fedsllm.device import DevicePacer

    return DevicePacer(flops_per_s, scenario.link.time_dilation, sleep=sleep_unless_stopped)


def compute_context(pacer: Any) -> Callable[[float, str], AbstractContextManager[Any]]:
    """`compute(flops, label)` for the training loops: paced when emulated."""
    if pacer is None:
        return lambda _flops, _label: nullcontext(None)
    return lambda flops, label: pacer.step(flops, label)


def register_info(scenario: ScenarioConfig, client_id: int, num_samples: int) -> Any:
    """What a client tells the controller about itself: its profile as the scenario
    places it (distance and gain from the seeded channel model)."""
    import math

    from fedsllm.link.channel import client_distances
    from fedsllm.wire.messages import RegisterInfo

    profile = scenario.profile(client_id)
    distance = float(client_distances(scenario)[client_id])
    # gain 0 dB means "from placement": a fixed gain would freeze per-round fading.
    gain_db = 0.0 if math.isnan(profile.gain_db) else profile.gain_db
    return RegisterInfo(
        client_id=client_id,
        num_samples=num_samples,
        flops=profile.flops,
        tx_power_dbm=profile.tx_power_dbm,
        distance_m=distance,
        gain_db=gain_db,
    )


def pace_downlink(
    shaper: Any, client_id: int, rate_bps: float, nbytes: int, new_message: bool
) -> None:
    """Hold one downlink message to client `client_id` until a link of `rate_bps`
    (0 = unlimited) has carried it; the servers learn the rate per message.

    Once the role is stopping (ROLE_STOP) nothing is paced any more: a shaper
    from build_role_shaper wakes from its sleep, and the rest of the payload
    goes out unpaced within the server's stop grace, so a reply already
    computed still reaches its peer (nothing to re-send) and no handler
    holds the stop."""
    import math

    from fedsllm.link.base import Direction

    if rate_bps <= 0 or ROLE_STOP.is_set():
        return
    if shaper.rates(client_id)[1] != rate_bps:
        shaper.set_rates(client_id, math.inf, rate_bps)
    shaper.pace(client_id, Direction.DOWN, nbytes, new_message=new_message)


def align_clock(tracer: Any, fed_channel: Any, timeout_s: float = 10.0) -> None:
    """Estimate this process's offset to the fed server's clock (fedsllm.clock) and
    put it on the tracer, so every process's records share one time axis."""
    from fedsllm.clock import measure_offset
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.wire.rpc import unary_call

    stub = fed_server_pb2_grpc.FedServerStub(fed_channel)
    request = fed_server_pb2.StatusRequest()
    clock = measure_offset(
        lambda: unary_call(stub.Status, request, timeout_s=timeout_s, attempts=5).server_unix_s
    )
    tracer.clock_offset_s = clock.offset_s
    tracer.event("clock_offset", offset_s=clock.offset_s, rtt_s=clock.rtt_s)


def record_emulation(tracer: Any, pacer: Any, shaper: Any) -> None:
    """Trace what device and link emulation did in this process, for reports."""
    import dataclasses

    if pacer is not None:
        tracer.event("device_summary", **dataclasses.asdict(pacer.summary()))
    if shaper is not None:
        for (client_id, direction), stats in shaper.stats().items():
            tracer.event(
                "link_stats",
                client=client_id,
                direction=direction.name.lower(),
                **dataclasses.asdict(stats),
            )


def install_stop_signals() -> threading.Event:
    """Make SIGTERM and SIGINT (how the launcher, compose and Ctrl-C stop a
    role) set ROLE_STOP, which it returns. Call it from the main thread."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: ROLE_STOP.set())
    signal.signal(signal.SIGINT, lambda *_: ROLE_STOP.set())
    return ROLE_STOP


def wait_for_stop(every_s: float = 0.5, tick: Callable[[], object] | None = None) -> None:
    """Block until SIGTERM or SIGINT, calling `tick` every `every_s` seconds
    meanwhile. A tick that waits should wait on ROLE_STOP, so a stop during
    it is seen at once. A tick that raises is logged and tried again at the
    next one: what it polls (a deadline, a checkpoint) is still due then, and
    the role's servers must not die of it."""
    stop = install_stop_signals()
    while not stop.wait(every_s):
        if tick is None:
            continue
        try:
            tick()
        except Exception:
            log.exception("tick failed; retried in %.1f s", every_s)
