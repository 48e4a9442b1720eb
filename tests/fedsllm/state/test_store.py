from __future__ import annotations

import json

import pytest

from fedsllm.errors import ConfigError, StateError
from fedsllm.state.errors import StoreFormatError
from fedsllm.state.format import tensor_digest
from fedsllm.state.store import (
    ClientStore,
    DiskBackend,
    FedServerStore,
    InMemoryBackend,
    MainServerStore,
    StateBackend,
    UpdateKey,
    open_backend,
    open_store,
)
from tests.fedsllm.state._blobs import adapter


@pytest.fixture(params=["memory", "disk"])
def backend(request, tmp_path) -> StateBackend:
    return InMemoryBackend() if request.param == "memory" else DiskBackend(tmp_path / "state")


class FailingBackend(InMemoryBackend):
    """Fails the n-th write (a crash at that point): what was written before stays."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.num_writes = 0

    def write(self, name: str, data: bytes) -> None:
        self.num_writes += 1
        if self.num_writes == self.fail_at:
            raise OSError("disk full")
        super().write(name, data)


# ---------------------------------------------------------------- backends
def test_backend_read_write_delete_names(backend: StateBackend) -> None:
    assert backend.read("a/b") is None
    backend.write("a/b", b"1")
    backend.write("a/c", b"2")
    backend.write("z", b"3")
    backend.write("a/b", b"4")
    assert backend.read("a/b") == b"4"
    assert backend.names("a/") == ["a/b", "a/c"]
    backend.delete("a/b")
    backend.delete("a/b")  # twice is fine
    assert backend.names() == ["a/c", "z"]


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x", ""])
def test_disk_backend_refuses_names_outside_its_root(tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        DiskBackend(tmp_path).write(name, b"x")


def test_factory() -> None:
    assert isinstance(open_store("fed_server"), FedServerStore)
    assert isinstance(open_store("main_server"), MainServerStore)
    assert isinstance(open_store("client"), ClientStore)
    assert isinstance(open_backend(None), InMemoryBackend)
    with pytest.raises(ConfigError, match="state.kind"):
        open_store("controller")


def test_factory_on_disk_persists_across_reopen(tmp_path) -> None:
    store = open_store("main_server", tmp_path / "ms")
    store.save(adapter(1), None, num_steps=5, num_updates=5, round_index=0)
    again = open_store("main_server", tmp_path / "ms").load()
    assert again is not None and again.num_steps == 5
    assert tensor_digest(again.adapter) == tensor_digest(adapter(1))


# ---------------------------------------------------------------- fed server
def _ledger(closed: int) -> dict:
    return {"closed_round": closed, "members": {"0": 3}}


def test_fed_server_store_round_trip(backend: StateBackend) -> None:
    store = FedServerStore(backend)
    empty = store.load()
    assert empty.ledger is None and empty.global_round == -1 and empty.global_adapter is None
    store.record_join(_ledger(-1))
    key = UpdateKey(client_id=0, round=0, attempt=1)
    store.record_update(key, adapter(7), _ledger(-1))
    store.record_round({"round": 0, "accepted": []}, adapter(8), _ledger(0))
    store.save_controller({"plan": {"num_rounds": 3}})
    snap = FedServerStore(backend).load()  # as a restarted fed server would
    assert snap.ledger == _ledger(0)
    assert snap.global_round == 0
    assert tensor_digest(snap.global_adapter) == tensor_digest(adapter(8))
    assert snap.controller == {"plan": {"num_rounds": 3}}
    assert tensor_digest(store.update(key)) == tensor_digest(adapter(7))
    assert store.update(UpdateKey(0, 0, 2)) is None
    assert store.round_records() == [{"round": 0, "accepted": []}]


def test_every_persisted_file_carries_the_version(tmp_path) -> None:
    store = FedServerStore(DiskBackend(tmp_path))
    store.record_update(UpdateKey(1, 0, 0), adapter(1), _ledger(-1))
    store.record_round({"round": 0}, adapter(2), _ledger(0))
    store.save_controller({})
    from fedsllm.state.format import check_safetensors

    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 5
    for path in files:
        if path.suffix == ".json":
            assert json.loads(path.read_text())["format_version"] == 1
        else:
            check_safetensors(str(path), path.read_bytes())


def test_a_file_of_another_version_is_refused_on_load(tmp_path) -> None:
    store = FedServerStore(DiskBackend(tmp_path))
    store.record_join(_ledger(-1))
    doc = json.loads((tmp_path / "ledger.json").read_text())
    doc["format_version"] = 2
    (tmp_path / "ledger.json").write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="ledger.json: format version 2"):
        FedServerStore(DiskBackend(tmp_path)).load()


@pytest.mark.parametrize("fail_at", [1, 2])
def test_update_commit_is_the_ledger_write(fail_at: int) -> None:
    backend = FailingBackend(fail_at)
    store = FedServerStore(backend)
    with pytest.raises(OSError):
        store.record_update(UpdateKey(0, 0, 0), adapter(1), _ledger(-1))
    # the ledger never names an update that is not there
    assert store.load().ledger is None


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_crash_while_closing_a_round_leaves_it_open(fail_at: int) -> None:
    backend = FailingBackend(fail_at=99)
    store = FedServerStore(backend)
    store.record_update(UpdateKey(0, 0, 0), adapter(1), _ledger(-1))
    backend.num_writes, backend.fail_at = 0, fail_at
    with pytest.raises(OSError):
        store.record_round({"round": 0}, adapter(2), _ledger(0))
    snap = store.load()
    assert snap.ledger == _ledger(-1) and snap.global_round == -1
    assert store.update(UpdateKey(0, 0, 0)) is not None  # round 0 re-closes from it


def test_prune_updates(backend: StateBackend) -> None:
    store = FedServerStore(backend)
    for r in range(3):
        store.record_update(UpdateKey(0, r, 0), adapter(r), _ledger(r - 1))
    assert store.prune_updates(before_round=2) == 2
    assert store.update(UpdateKey(0, 1, 0)) is None
    assert store.update(UpdateKey(0, 2, 0)) is not None


# ---------------------------------------------------------------- checkpoints
def test_main_server_store_keeps_only_the_latest_commit(backend: StateBackend) -> None:
    store = MainServerStore(backend)
    assert store.load() is None
    for i in range(3):
        seq = store.save(
            adapter(i), adapter(10 + i), num_steps=i, num_updates=i, round_index=i, extra={"i": i}
        )
        assert seq == i + 1
    snap = MainServerStore(backend).load()
    assert snap is not None
    assert (snap.num_steps, snap.num_updates, snap.round, snap.extra, snap.seq) == (
        2,
        2,
        2,
        {"i": 2},
        3,
    )
    assert tensor_digest(snap.adapter) == tensor_digest(adapter(2))
    assert tensor_digest(snap.optimizer) == tensor_digest(adapter(12))
    assert len(backend.names()) == 3  # checkpoint.json + adapter + optimizer


def test_a_torn_checkpoint_keeps_the_previous_one() -> None:
    backend = FailingBackend(fail_at=99)
    store = ClientStore(backend)
    store.save(0, adapter(1), adapter(2), pushed=True, attempt=0)
    backend.num_writes, backend.fail_at = 0, 3  # adapter, optimizer written; doc fails
    with pytest.raises(OSError):
        store.save(1, adapter(3), adapter(4))
    snap = store.load()
    assert snap is not None and snap.round == 0 and snap.pushed and snap.seq == 1
    assert tensor_digest(snap.adapter) == tensor_digest(adapter(1))
    store.save(1, adapter(3), None, attempt=2)  # the next commit reuses seq 2 cleanly
    snap = store.load()
    assert snap is not None and (snap.round, snap.attempt, snap.optimizer) == (1, 2, None)


def test_marking_a_client_checkpoint_pushed_writes_its_document_only() -> None:
    """The write after a push (on the round's critical path) is one small
    document: the adapter and optimizer it names stay as saved."""
    backend = FailingBackend(fail_at=99)
    store = ClientStore(backend)
    store.save(3, adapter(1), adapter(2), attempt=1, extra={"batches": 12})
    before = {name: backend.read(name) for name in backend.names()}
    backend.num_writes = 0
    assert store.mark_pushed(3, 1) == 1
    assert backend.num_writes == 1
    after = {name: backend.read(name) for name in backend.names()}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == ["checkpoint.json"]
    snap = store.load()
    assert snap is not None and (snap.round, snap.pushed, snap.attempt, snap.seq) == (3, True, 1, 1)
    assert snap.extra == {"batches": 12}
    assert tensor_digest(snap.adapter) == tensor_digest(adapter(1))
    assert tensor_digest(snap.optimizer) == tensor_digest(adapter(2))


@pytest.mark.parametrize(("round_index", "attempt"), [(2, 1), (3, 0)])
def test_marking_another_rounds_checkpoint_pushed_is_refused_and_changes_nothing(
    round_index: int, attempt: int
) -> None:
    backend = InMemoryBackend()
    store = ClientStore(backend)
    with pytest.raises(StateError, match="no checkpoint"):
        store.mark_pushed(round_index, attempt)
    store.save(3, adapter(1), None, attempt=1)
    before = {name: backend.read(name) for name in backend.names()}
    with pytest.raises(StateError, match="the checkpoint holds"):
        store.mark_pushed(round_index, attempt)
    assert {name: backend.read(name) for name in backend.names()} == before


def test_checkpoint_naming_a_missing_file_is_an_error(tmp_path) -> None:
    store = ClientStore(DiskBackend(tmp_path))
    store.save(0, adapter(1), None)
    next(tmp_path.glob("adapter.*")).unlink()
    with pytest.raises(FileNotFoundError, match="adapter"):
        store.load()


def test_opening_a_disk_store_to_read_creates_nothing(tmp_path) -> None:
    root = tmp_path / "absent"
    store = open_store("fed_server", root)
    assert store.load().ledger is None and store.round_records() == []
    assert not root.exists()


def _with_temp_files(root) -> None:
    FedServerStore(DiskBackend(root)).record_join(_ledger(-1))
    (root / ".ledger.json.999.tmp").write_bytes(b"half")
    (root / "updates").mkdir()
    (root / "updates" / ".x.safetensors.1.tmp").write_bytes(b"half")


def _files(root) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["fed_server", "main_server", "client"])
def test_temp_files_of_a_killed_writer_are_removed_when_the_owner_opens(tmp_path, kind) -> None:
    _with_temp_files(tmp_path)
    open_store(kind, tmp_path, owner=True)
    assert _files(tmp_path) == ["ledger.json"]
    assert FedServerStore(DiskBackend(tmp_path)).load().ledger == _ledger(-1)


def test_a_reader_opening_the_store_leaves_temp_files_alone(tmp_path) -> None:
    """`fedsllm report` on a live run opens the fed server's store: a temp
    file there may be a write in flight, which it must not delete."""
    from fedsllm.state.audit import audit_run_dir

    run_dir = tmp_path / "run"
    _with_temp_files(run_dir / "state")
    before = _files(run_dir)
    assert ".ledger.json.999.tmp" in before
    open_store("fed_server", run_dir / "state").load()
    FedServerStore(DiskBackend(run_dir / "state")).round_records()
    audit_run_dir(run_dir)
    assert _files(run_dir) == before
