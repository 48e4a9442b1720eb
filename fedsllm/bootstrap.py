"""How a role starts from nothing but the fed server's address (no shared files).

A client or the main server is given the fed server's address, its identity
and a private work directory. From the fed server's RunInfo service it gets
the resolved scenario with its hash, and the frozen base weights (streamed in
chunks, hash-checked) when the base is pretrained; it then Joins presenting
both hashes, and the fed server refuses a mismatch.

Every address, port and file of a role comes from the first of: its flag, a
FEDSLLM_* environment variable, the scenario (run.fed_address, ...). A bad
value is refused naming where it came from (`SettingError`, exit 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fedsllm.errors import ConfigError

log = logging.getLogger(__name__)

RUN_INFO_SERVICE = "fedsllm.proto.RunInfo"

MAX_BASE_BYTES = 8 * 2**30
"""Largest base FetchBase accepts (gpt2-small is ~0.5 GiB in float32)."""


class SettingError(ConfigError):
    """A flag, variable or scenario field with a value a role cannot use (exit 2)."""


# ------------------------------------------------------------ flag > env > scenario


class Setting(NamedTuple):
    """One resolved value and the source that named it (for messages)."""

    value: Any
    source: str


def resolve(
    flag: str,
    flag_value: Any,
    env_var: str,
    scenario_field: str = "",
    scenario_value: Any = None,
    *,
    default: Any = None,
    parse: Callable[[str], Any] = str,
    env: Mapping[str, str] | None = None,
) -> Setting:
    """The first of `flag_value`, $`env_var`, `scenario_value` that is given (not
    None or ""), parsed with `parse`; else `default`. A value `parse` rejects
    (ValueError) is a SettingError naming the flag, variable or field."""
    env = os.environ if env is None else env
    candidates = (
        (flag_value, flag),
        (env.get(env_var), env_var),
        (scenario_value, scenario_field),
    )
    for value, source in candidates:
        if value is None or value == "" or not source:
            continue
        try:
            return Setting(parse(str(value)), source)
        except ValueError as err:
            raise SettingError(source, str(value), str(err)) from None
    return Setting(default, "default")


def parse_address(text: str, *, allow_port_zero: bool = False) -> str:
    """host:port with a port in [1, 65535] ([0, ...] for a bind)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"port {port!r} is not a number") from None
    low = 0 if allow_port_zero else 1
    if not low <= number <= 65535:
        raise ValueError(f"port {number} is not in [{low}, 65535]")
    return text


def parse_bind(text: str) -> str:
    return parse_address(text, allow_port_zero=True)


def parse_client_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be an integer") from None
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def parse_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError("no such file")
    return path


def parse_dir(text: str) -> Path:
    """A directory this process can write (created if absent)."""
    from fedsllm.paths import make_dir

    path = Path(text)
    try:
        make_dir(path)
    except OSError as err:
        raise ValueError(f"cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError("is not writable")
    return path.resolve()


# ------------------------------------------------------------ scenario from the fed server


@dataclass(frozen=True, slots=True)
class RunInfo:
    scenario: Any
    scenario_hash: str
    base_hash: str
    base_bytes: int


def scenario_of(doc: Mapping[str, Any]) -> Any:
    from fedsllm.config import from_dict

    return from_dict(dict(doc))


def get_run_info(channel: Any, timeout_s: float = 30.0, retry: Any = None) -> RunInfo:
    """The fed server's resolved scenario, its hash and the base's hash;
    retried on UNAVAILABLE like every client call (`retry`, as fetch_base's)."""
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc
    from fedsllm.wire.rpc import RetryPolicy

    stub = fed_server_pb2_grpc.RunInfoStub(channel)
    request = fed_server_pb2.GetScenarioRequest()
    retry = RetryPolicy(seed=None) if retry is None else retry
    reply = retry.call("GetScenario", lambda: stub.GetScenario(request, timeout=timeout_s))
    return RunInfo(
        scenario=scenario_of(json.loads(reply.scenario_json)),
        scenario_hash=reply.scenario_hash,
        base_hash=reply.base_hash,
        base_bytes=reply.base_bytes,
    )


def check_local_scenario(path: Path, source: str, fed_hash: str) -> None:
    """A local scenario file (TOML, or a resolved scenario.json) must hash to the
    fed server's; SettingError naming both otherwise."""
    from fedsllm.launch import scenario_hash
    from fedsllm.roles import load_resolved_scenario

    try:
        # Recomputed, not the hash a scenario.json carries with it.
        local_hash = scenario_hash(load_resolved_scenario(path, source)[0])
    except ConfigError as err:
        raise SettingError(err.path, err.value, err.reason) from None
    if local_hash != fed_hash:
        raise SettingError(
            source,
            str(path),
            f"scenario hash mismatch: this file hashes to {local_hash}, the fed server "
            f"runs {fed_hash}; give the fed server's scenario or none",
        )


# ------------------------------------------------------------ the base weights


def base_weights_hash(model: Any) -> str:
    """sha256 of the base's state dict (names, dtypes, shapes, bytes, in name order):
    equal exactly when the weights are bit-identical."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(dtype=_u8()).numpy().tobytes())
    return digest.hexdigest()[:24]


def _u8() -> Any:
    import torch

    return torch.uint8


def base_is_served(scenario: Any) -> bool:
    """True when the base is pretrained (a cache on the fed server's host), so
    peers fetch it; a seeded preset or a checkpoint is built by each role."""
    from fedsllm.model.build import PRETRAIN_PRESETS

    return (
        not scenario.model.path
        and scenario.model.pretrain_steps > 0
        and scenario.model.preset in PRETRAIN_PRESETS
    )


def fetch_base_responses(path: Path, base_hash: str, chunk_bytes: int) -> Iterator[Any]:
    """FetchBase's stream: a header, then the file's chunks (read as they go)."""
    from fedsllm.proto import fed_server_pb2

    total = path.stat().st_size
    yield fed_server_pb2.FetchBaseResponse(
        header=fed_server_pb2.FetchBaseHeader(base_hash=base_hash, total_bytes=total)
    )
    with open(path, "rb") as fh:
        offset = 0
        while data := fh.read(chunk_bytes):
            msg = fed_server_pb2.FetchBaseResponse()
            msg.chunk.total_bytes = total
            msg.chunk.offset = offset
            msg.chunk.data = data
            offset += len(data)
            yield msg


def fetch_base(
    channel: Any,
    work_dir: Path,
    base_hash: str,
    timeout_s: float = 600.0,
    retry: Any = None,
) -> Path:
    """Stream the fed server's base into WORK_DIR/base/<hash>.safetensors (kept:
    a restarted role fetches nothing) and return its path. The weights' hash is
    checked by the caller once they are loaded (build_part).

    Like every client call, the download retries on UNAVAILABLE (a fed server
    restarting, or too busy to take the connection) with `retry`'s backoff and
    budget (fedsllm.wire.rpc.RetryPolicy; default: a fresh seed, the reconnect
    budget of 300 s per outage); a download cut off midway starts again from
    its first byte. A malformed stream (WireError) is never retried."""
    from fedsllm.wire.rpc import RetryPolicy

    target = work_dir / "base" / f"{base_hash}.safetensors"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    retry = RetryPolicy(seed=None) if retry is None else retry
    try:
        written = retry.call(
            "FetchBase", lambda: _download_base(channel, tmp, base_hash, timeout_s)
        )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("base %s fetched from the fed server (%d bytes)", base_hash, written)
    return target


def _download_base(channel: Any, tmp: Path, base_hash: str, timeout_s: float) -> int:
    """One FetchBase stream into `tmp` (rewritten from its first byte); the
    bytes written. grpc.RpcError when the call fails, WireError on a defect."""
    from fedsllm.errors import WireError
    from fedsllm.proto import fed_server_pb2, fed_server_pb2_grpc

    stub = fed_server_pb2_grpc.RunInfoStub(channel)
    stream = stub.FetchBase(fed_server_pb2.FetchBaseRequest(), timeout=timeout_s)
    try:
        first = next(stream, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise WireError("FetchBaseResponse.kind", "first message must be a header")
        header = first.header
        if header.base_hash != base_hash:
            raise WireError(
                "FetchBaseHeader.base_hash", f"{header.base_hash!r}, expected {base_hash!r}"
            )
        if not 0 < header.total_bytes <= MAX_BASE_BYTES:
            raise WireError("FetchBaseHeader.total_bytes", f"={header.total_bytes} out of range")
        written = 0
        with open(tmp, "wb") as fh:
            for msg in stream:
                chunk = msg.chunk
                if (
                    msg.WhichOneof("kind") != "chunk"
                    or chunk.offset != written
                    or chunk.total_bytes != header.total_bytes
                    or not chunk.data
                    or written + len(chunk.data) > header.total_bytes
                ):
                    raise WireError("FetchBaseResponse.chunk", f"out of order at byte {written}")
                fh.write(chunk.data)
                written += len(chunk.data)
        if written != header.total_bytes:
            raise WireError("FetchBaseResponse", f"ended at byte {written} of {header.total_bytes}")
        return written
    finally:
        cancel = getattr(stream, "cancel", None)
        if cancel is not None:
            cancel()  # a refused stream is not left open; a finished one is unaffected


def save_base(model: Any, path: Path) -> None:
    """The base's weights as safetensors (atomic), for FetchBase."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------ the server adapter


def server_adapter_requests(
    round_index: int, final: bool, blob: bytes, chunk_bytes: int
) -> Iterator[Any]:
    from fedsllm.proto import fed_server_pb2
    from fedsllm.wire.adapters import blob_to_chunks

    yield fed_server_pb2.PushServerAdapterRequest(
        header=fed_server_pb2.PushServerAdapterHeader(
            round=round_index, final=final, total_bytes=len(blob)
        )
    )
    yield from blob_to_chunks(blob, chunk_bytes, fed_server_pb2.PushServerAdapterRequest)


def read_server_adapter(requests: Iterator[Any], max_bytes: int) -> tuple[int, bool, bytes]:
    """A PushServerAdapter stream -> (round, final, blob); WireError on a defect."""
    from fedsllm.errors import WireError
    from fedsllm.wire.adapters import AdapterAssembler, read_blob_chunks

    it = iter(requests)
    first = next(it, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise WireError("PushServerAdapterRequest.kind", "first message must be a header")
    header = first.header
    if not 0 < header.total_bytes <= max_bytes:
        raise WireError(
            "PushServerAdapterHeader.total_bytes",
            f"={header.total_bytes}, must be in [1, {max_bytes}]",
        )
    asm = AdapterAssembler(header.total_bytes, max_bytes, preallocate=False)
    return header.round, header.final, read_blob_chunks(it, "PushServerAdapterRequest", asm)
