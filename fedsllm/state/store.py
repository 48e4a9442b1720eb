"""Each role's state behind one small interface, in memory or on disk.

Layering (STYLE.md rule 19, after Flower's LinkState / InMemoryLinkState /
SqlLinkState behind a factory):

- `StateBackend` (ABC) is where bytes live: `InMemoryBackend` for tests,
  `DiskBackend` for runs (one file per name, written by
  fedsllm.state.format.atomic_write). This is the only thing that varies.
- One typed store per role over any backend: `FedServerStore`,
  `MainServerStore`, `ClientStore`. They stamp every file with the one
  FORMAT_VERSION, refuse a file of another, and fix the order of the writes
  of one commit, so the in-memory backend in a test exercises exactly the
  ordering a run relies on. The commit point of each store is one JSON
  document, written last; tensor files it names are written before it.
- `open_store(kind, path | None)`: the factory; None gives memory.

What each store holds, and when a role writes it, is the role's business;
the round rules themselves are in fedsllm/state/ledger.py. Nothing here
parses a tensor: adapters and optimizer states are safetensors bytes.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fedsllm.errors import ConfigError, FedsLLMError, StateError
from fedsllm.state.format import (
    atomic_write,
    check_safetensors,
    decode_doc,
    encode_doc,
    stamp_safetensors,
)


# ====================================================================== backends
class StateBackend(ABC):
    """Named byte strings. A write is atomic per name; names use '/' as separator."""

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """The bytes under `name`, or None when there are none."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Replace `name` atomically: a crash leaves the old bytes or the new."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove `name`; no error when it is absent."""

    @abstractmethod
    def names(self, prefix: str = "") -> list[str]:
        """Every name under `prefix`, sorted."""

    @property
    def location(self) -> str:
        """Where the bytes are, for messages."""
        return type(self).__name__


class InMemoryBackend(StateBackend):
    """A dict; for tests, and for a role run without a state directory."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> bytes | None:
        with self._lock:
            return self._data.get(name)

    def write(self, name: str, data: bytes) -> None:
        with self._lock:
            self._data[name] = bytes(data)

    def delete(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)

    def names(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(n for n in self._data if n.startswith(prefix))

    @property
    def location(self) -> str:
        return "memory"


class DiskBackend(StateBackend):
    """One file per name under `root` (the role's own state directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        """Created by the first write, so opening a store only to read it (the
        report's audit) leaves no trace, and changes nothing: a reader may open
        the directory of a live role, whose temp files are writes in flight."""

    def remove_temp_files(self) -> int:
        """Remove the temp files a killed writer left behind; returns a count.
        Only the role that owns this directory calls it, once at its start
        (open_store(..., owner=True)), before it writes: no other writer is
        alive then, so every temp file is a dead one."""
        if not self.root.is_dir():
            return 0
        stale = list(self.root.rglob(".*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def _path(self, name: str) -> Path:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or any(p in ("..", ".") for p in parts):
            raise ValueError(f"state name {name!r} must be a relative path without '..'")
        return self.root.joinpath(*parts)

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self._path(name), data)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def names(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = (
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        return sorted(n for n in found if n.startswith(prefix))

    @property
    def location(self) -> str:
        return str(self.root)


# ====================================================================== versioned files
class _Files:
    """Versioned documents and tensor files over a backend; every read checks the version."""

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend

    def _label(self, name: str) -> str:
        return f"{self.backend.location}/{name}"

    def put_doc(self, name: str, kind: str, data: Mapping[str, Any]) -> None:
        self.backend.write(name, encode_doc(kind, data))

    def get_doc(self, name: str, kind: str) -> dict[str, Any] | None:
        raw = self.backend.read(name)
        return None if raw is None else decode_doc(self._label(name), raw, kind)

    def put_tensors(self, name: str, blob: bytes) -> None:
        self.backend.write(name, stamp_safetensors(blob))

    def get_tensors(self, name: str) -> bytes | None:
        raw = self.backend.read(name)
        if raw is not None:
            check_safetensors(self._label(name), raw)
        return raw


# ====================================================================== fed server
class StorageError(FedsLLMError, OSError):
    """The store could not commit (a full disk, an I/O error): nothing was
    committed, the state is as before the call. Transient from a peer's point
    of view: fedsllm/wire/status.py answers UNAVAILABLE, and the peer retries
    the same request later. An OSError still, for callers that catch those."""


@contextmanager
def _committing(what: str, location: str) -> Iterator[None]:
    """Raise the OSError of a failed commit as StorageError naming it."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        raise StorageError(f"state store {location}: could not commit {what}: {err}") from err


@dataclass(frozen=True)
class UpdateKey:
    """What makes a push unique: the same key twice is one update."""

    client_id: int
    round: int
    attempt: int

    @property
    def name(self) -> str:
        return f"updates/r{self.round:06d}/c{self.client_id:05d}_a{self.attempt:04d}.safetensors"


@dataclass(frozen=True)
class FedServerSnapshot:
    """What a restarted fed server resumes from (None / -1: nothing yet)."""

    ledger: dict[str, Any] | None
    """RoundLedger.to_dict() of the last commit: round, membership, accepted updates."""
    global_round: int
    """Round of the latest global adapter (-1: none, the clients' identical init)."""
    global_adapter: bytes | None
    controller: dict[str, Any] | None
    """Controller registrations and plan, as the controller saved them."""


class FedServerStore:
    """Round number, membership, accepted updates, global adapters, controller state.

    Commit points (each a single document write, made last):
    - `record_join` / `record_update`: ledger.json (an accepted update's
      tensors are written before it, so an update the ledger names exists);
    - `record_round`: the global adapter and the round record first, then
      ledger.json with the round closed. A crash between aggregation and the
      ledger write re-closes the same round from the same updates on restart.
    Accepted updates are kept after their round closes: the audit
    (fedsllm/state/audit.py) recomputes every global adapter from them.
    """

    LEDGER = "ledger.json"
    CONTROLLER = "controller.json"

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self._files = _Files(backend)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- writes
    # Each raises StorageError when a write fails: the commit point (the last
    # write) was not reached, so what was committed before still stands.
    def record_join(self, ledger: Mapping[str, Any]) -> None:
        with self._lock, _committing("a join", self.backend.location):
            self._files.put_doc(self.LEDGER, "fed_server.ledger", ledger)

    def record_update(self, key: UpdateKey, blob: bytes, ledger: Mapping[str, Any]) -> None:
        """Persist an accepted update, then the ledger that accepts it."""
        with self._lock, _committing(f"update {key}", self.backend.location):
            self._files.put_tensors(key.name, blob)
            self._files.put_doc(self.LEDGER, "fed_server.ledger", ledger)

    def record_round(
        self, record: Mapping[str, Any], global_adapter: bytes, ledger: Mapping[str, Any]
    ) -> None:
        """Persist a closed round: its global adapter, its record, then the ledger."""
        round_index = int(record["round"])
        with self._lock, _committing(f"round {round_index}", self.backend.location):
            self._files.put_tensors(f"globals/r{round_index:06d}.safetensors", global_adapter)
            self._files.put_doc(self._round_name(round_index), "fed_server.round", record)
            self._files.put_doc(self.LEDGER, "fed_server.ledger", ledger)

    def save_controller(self, state: Mapping[str, Any]) -> None:
        with self._lock, _committing("the controller state", self.backend.location):
            self._files.put_doc(self.CONTROLLER, "fed_server.controller", state)

    @staticmethod
    def _round_name(round_index: int) -> str:
        return f"rounds/r{round_index:06d}.json"

    def prune_updates(self, before_round: int) -> int:
        """Drop the updates of rounds < before_round (no audit of them then); returns a count."""
        num = 0
        with self._lock:
            for name in self.backend.names("updates/"):
                if int(name.split("/")[1][1:]) < before_round:
                    self.backend.delete(name)
                    num += 1
        return num

    # ---------------------------------------------------------------- reads
    def load(self) -> FedServerSnapshot:
        with self._lock:
            ledger = self._files.get_doc(self.LEDGER, "fed_server.ledger")
            controller = self._files.get_doc(self.CONTROLLER, "fed_server.controller")
            closed = int(ledger.get("closed_round", -1)) if ledger else -1
            blob = self.global_adapter(closed) if closed >= 0 else None
            return FedServerSnapshot(ledger, closed if blob is not None else -1, blob, controller)

    def update(self, key: UpdateKey) -> bytes | None:
        return self._files.get_tensors(key.name)

    def global_adapter(self, round_index: int) -> bytes | None:
        return self._files.get_tensors(f"globals/r{round_index:06d}.safetensors")

    def round_records(self, last: int | None = None) -> list[dict[str, Any]]:
        """Every closed round's record, in round order; only the `last` ones
        when given (what a restart needs, without reading a long run's all)."""
        names = self.backend.names("rounds/")
        if last is not None:
            names = names[-last:] if last > 0 else []
        docs = (self._files.get_doc(name, "fed_server.round") for name in names)
        return [doc for doc in docs if doc is not None]


# ====================================================================== checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """One commit of a checkpoint store: named tensor files and JSON counters."""

    seq: int
    """Commit number, 1 for the first."""
    blobs: dict[str, bytes]
    meta: dict[str, Any] = field(default_factory=dict)


class _CheckpointStore:
    """Latest-only checkpoint: tensor files named by commit number, then the
    document naming them (the commit point), then the older files go."""

    KIND = "checkpoint"
    DOC = "checkpoint.json"

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self._files = _Files(backend)
        self._lock = threading.Lock()

    def _save(self, blobs: Mapping[str, bytes], meta: Mapping[str, Any]) -> int:
        with self._lock:
            doc = self._files.get_doc(self.DOC, self.KIND)
            seq = int(doc["seq"]) + 1 if doc else 1
            names = {part: f"{part}.{seq:08d}.safetensors" for part in blobs}
            for part, blob in blobs.items():
                self._files.put_tensors(names[part], blob)
            self._files.put_doc(self.DOC, self.KIND, {"seq": seq, "files": names, "meta": meta})
            keep = set(names.values()) | {self.DOC}
            for name in self.backend.names():
                if name not in keep:
                    self.backend.delete(name)
            return seq

    def _update_meta(self, expect: Mapping[str, Any], changes: Mapping[str, Any]) -> int:
        """Change fields of the latest checkpoint's meta in place, when its meta
        holds `expect`: one small document written, its tensor files kept as
        they are. StateError (nothing written) when there is no checkpoint or it
        is another one. Returns its commit number."""
        with self._lock:
            doc = self._files.get_doc(self.DOC, self.KIND)
            if doc is None:
                raise StateError(f"{self.backend.location}/{self.DOC}: no checkpoint to update")
            meta = dict(doc["meta"])
            differs = {k: meta.get(k) for k, v in expect.items() if meta.get(k) != v}
            if differs:
                raise StateError(
                    f"{self.backend.location}/{self.DOC}: the checkpoint holds {differs}, "
                    f"not {dict(expect)}"
                )
            meta.update(changes)
            self._files.put_doc(self.DOC, self.KIND, {**doc, "meta": meta})
            return int(doc["seq"])

    def _load(self) -> Checkpoint | None:
        with self._lock:
            doc = self._files.get_doc(self.DOC, self.KIND)
            if doc is None:
                return None
            blobs: dict[str, bytes] = {}
            for part, name in doc["files"].items():
                blob = self._files.get_tensors(name)
                if blob is None:
                    raise FileNotFoundError(
                        f"{self.backend.location}/{self.DOC} names {name}, which is missing"
                    )
                blobs[part] = blob
            return Checkpoint(int(doc["seq"]), blobs, dict(doc["meta"]))


@dataclass(frozen=True)
class MainServerSnapshot:
    adapter: bytes
    """The server-side LoRA adapter (safetensors)."""
    optimizer: bytes | None
    """fedsllm.state.optim.optimizer_to_bytes of its optimizer (None: not kept)."""
    num_steps: int
    """Batches computed so far."""
    num_updates: int
    """Optimizer steps applied so far."""
    round: int
    """Latest round a batch came from (-1: none)."""
    extra: dict[str, Any]
    seq: int
    wave: bytes | None = None
    """Gradients of a partial wave held at the checkpoint (wave mode; None: none)."""
    applied: dict[str, Any] = field(default_factory=dict)
    """Per client (id as a string), the latest train step this checkpoint holds:
    its key, tensor digest and reply fields (main_server.compute.TrainerState)."""
    replies: bytes | None = None
    """Those steps' reply gradients (safetensors by client id; None: no step)."""


class MainServerStore(_CheckpointStore):
    """The main server's adapter, optimizer state, step counters, in wave
    mode the gradients of a partial wave (so a checkpoint never forces one),
    and per client the latest train step applied with its reply: written in
    the same commit as the adapter, so the checkpoint says exactly which
    steps it contains and a re-send of one is answered, not applied again."""

    KIND = "main_server.checkpoint"

    def save(
        self,
        adapter: bytes,
        optimizer: bytes | None,
        *,
        num_steps: int,
        num_updates: int,
        round_index: int,
        extra: Mapping[str, Any] | None = None,
        wave: bytes | None = None,
        applied: Mapping[str, Any] | None = None,
        replies: bytes | None = None,
    ) -> int:
        blobs = {"adapter": adapter} | ({"optimizer": optimizer} if optimizer else {})
        if wave is not None:
            blobs["wave"] = wave
        if replies is not None:
            blobs["replies"] = replies
        meta = {
            "num_steps": num_steps,
            "num_updates": num_updates,
            "round": round_index,
            "extra": dict(extra or {}),
            "applied": dict(applied or {}),
        }
        return self._save(blobs, meta)

    def load(self) -> MainServerSnapshot | None:
        ckpt = self._load()
        if ckpt is None:
            return None
        m = ckpt.meta
        return MainServerSnapshot(
            adapter=ckpt.blobs["adapter"],
            optimizer=ckpt.blobs.get("optimizer"),
            num_steps=int(m["num_steps"]),
            num_updates=int(m["num_updates"]),
            round=int(m["round"]),
            extra=dict(m["extra"]),
            seq=ckpt.seq,
            wave=ckpt.blobs.get("wave"),
            applied=dict(m.get("applied", {})),
            replies=ckpt.blobs.get("replies"),
        )


@dataclass(frozen=True)
class ClientSnapshot:
    round: int
    """The round the saved adapter was trained through (-1: the initial one)."""
    adapter: bytes
    optimizer: bytes | None
    pushed: bool
    """True once the round's update was accepted (or refused): do not train it again."""
    attempt: int
    """The attempt number of that round's push, reused on a retried push."""
    extra: dict[str, Any]
    seq: int


class ClientStore(_CheckpointStore):
    """A client's round, its local adapter and its optimizer state."""

    KIND = "client.checkpoint"

    def save(
        self,
        round_index: int,
        adapter: bytes,
        optimizer: bytes | None,
        *,
        pushed: bool = False,
        attempt: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        blobs = {"adapter": adapter} | ({"optimizer": optimizer} if optimizer else {})
        meta = {
            "round": round_index,
            "pushed": pushed,
            "attempt": attempt,
            "extra": dict(extra or {}),
        }
        return self._save(blobs, meta)

    def mark_pushed(self, round_index: int, attempt: int) -> int:
        """Record that round `round_index`'s update (the checkpoint saved before
        its push, under `attempt`) was accepted or refused: only the document
        is rewritten, not the adapter and optimizer it names again. A lost
        marker costs nothing but a re-push the fed server answers from its
        ledger, but each write is on the round's critical path. StateError when
        the checkpoint is of another round or attempt."""
        return self._update_meta({"round": round_index, "attempt": attempt}, {"pushed": True})

    def load(self) -> ClientSnapshot | None:
        ckpt = self._load()
        if ckpt is None:
            return None
        m = ckpt.meta
        return ClientSnapshot(
            round=int(m["round"]),
            adapter=ckpt.blobs["adapter"],
            optimizer=ckpt.blobs.get("optimizer"),
            pushed=bool(m["pushed"]),
            attempt=int(m["attempt"]),
            extra=dict(m["extra"]),
            seq=ckpt.seq,
        )


# ====================================================================== factory
Store = FedServerStore | MainServerStore | ClientStore

STORE_KINDS: Mapping[str, Callable[[StateBackend], Store]] = {
    "fed_server": FedServerStore,
    "main_server": MainServerStore,
    "client": ClientStore,
}
"""Role -> its store; open_store looks kinds up here (no if-chain)."""


def open_backend(path: str | Path | None, *, owner: bool = False) -> StateBackend:
    """Memory for None, else the directory `path` (created by the first write).
    `owner`: the caller is the role that writes there, at its start: the temp
    files a killed writer left are removed. A reader (a report) leaves them."""
    if path is None:
        return InMemoryBackend()
    backend = DiskBackend(Path(path))
    if owner:
        backend.remove_temp_files()
    return backend


def open_store(kind: str, path: str | Path | None = None, *, owner: bool = False) -> Store:
    """The store of role `kind` ("fed_server", "main_server", "client"), in
    memory (path None) or in the directory `path`. The role whose directory
    it is opens it with owner=True at its start (see open_backend); anyone
    else only reads it and opens it without."""
    factory = STORE_KINDS.get(kind)
    if factory is None:
        raise ConfigError("state.kind", kind, f"expected one of {sorted(STORE_KINDS)}")
    return factory(open_backend(path, owner=owner))
