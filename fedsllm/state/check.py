"""Read-only checks of a run's stores, for a launcher about to resume it.

`stored_progress` reads the fed server's store (RUN_DIR/state) as the fed
server itself does at its start (FedServerStore.load, the round records,
RoundLedger.restore, the open round's accepted updates) and says how far
the run got; `check_checkpoint_store` loads a main server's or a client's
store as the role does (MainServerStore / ClientStore .load). Both go
through the stores' own loaders, open no store as its owner (no temp file is
removed, no directory created) and write nothing. A store that cannot be
read is a ConfigError naming the file and what is wrong with it, so
`fedsllm run --resume` refuses it in one line, exit 2, before it writes or
starts anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsllm.errors import NO_VALUE, ConfigError, StateError
from fedsllm.state.errors import StoreFormatError
from fedsllm.state.ledger import RoundLedger, RoundRecord
from fedsllm.state.store import (
    ClientStore,
    FedServerStore,
    MainServerStore,
    UpdateKey,
    open_store,
)

_MALFORMED = (KeyError, TypeError, ValueError, AttributeError)
"""What a loader raises on a document of the right format whose fields are not
what the store wrote (a field missing, of another type)."""


@dataclass(frozen=True)
class StoredProgress:
    """How far the fed server's store says a run got."""

    rounds_closed: int
    """Rounds aggregated and committed (closed_round + 1)."""
    num_rounds: int
    """Rounds the run planned (the ledger's: the scenario's, or the controller's plan)."""
    final_adapter: bool
    """Whether the latest closed round's global adapter is in the store."""

    @property
    def complete(self) -> bool:
        """Every planned round aggregated and its global adapter committed:
        a resumed fed server would have no round left to open."""
        return self.rounds_closed >= self.num_rounds and self.final_adapter


def _unreadable(label: str, err: BaseException) -> ConfigError:
    if isinstance(err, StoreFormatError):
        return ConfigError(err.path, NO_VALUE, err.problem)
    if isinstance(err, KeyError):
        what = f"no {err.args[0]!r} field" if err.args else "a field is missing"
    elif isinstance(err, FileNotFoundError) and err.filename is None:
        what = str(err)  # the store's own message: "<doc> names <file>, which is missing"
    elif isinstance(err, OSError):
        what = f"cannot be read ({err.strerror or err})"
    else:
        what = str(err) or type(err).__name__
    return ConfigError(label, NO_VALUE, f"{what}; the store cannot be resumed from")


def stored_progress(state_dir: Path, num_clients: int) -> StoredProgress | None:
    """The progress the fed server's store in `state_dir` records (None: no
    ledger yet, the run never got a client to join); ConfigError naming the
    file when one it would resume from cannot be read."""
    store = open_store("fed_server", state_dir)
    assert isinstance(store, FedServerStore)
    ledger_label = f"{state_dir}/{FedServerStore.LEDGER}"
    try:
        snap = store.load()
    except (StoreFormatError, OSError, *_MALFORMED) as err:
        raise _unreadable(ledger_label, err) from None
    names = store.backend.names("rounds/")
    try:
        docs = store.round_records()  # a StoreFormatError names its own file
    except (StoreFormatError, OSError) as err:
        raise _unreadable(f"{state_dir}/rounds", err) from None
    records = []
    for name, doc in zip(names, docs, strict=True):
        try:
            records.append(RoundRecord.from_dict(doc))
        except _MALFORMED as err:
            raise _unreadable(f"{state_dir}/{name}", err) from None
    if snap.ledger is None:
        return None
    try:
        ledger = RoundLedger.restore(
            snap.ledger,
            num_clients=num_clients,
            num_rounds=int(snap.ledger["num_rounds"]),
            now=0.0,
            records=records,
        )
    except (StateError, *_MALFORMED) as err:
        raise _unreadable(ledger_label, err) from None
    for a in ledger.accepted():
        key = UpdateKey(a.client_id, a.round, a.attempt)
        try:
            found = store.update(key)
        except (StoreFormatError, OSError) as err:
            raise _unreadable(f"{state_dir}/{key.name}", err) from None
        if found is None:
            raise ConfigError(
                f"{state_dir}/{key.name}",
                NO_VALUE,
                f"missing, though {FedServerStore.LEDGER} accepted it; "
                "the store cannot be resumed from",
            )
    closed = ledger.closed_round
    return StoredProgress(
        rounds_closed=closed + 1,
        num_rounds=ledger.num_rounds,
        final_adapter=closed < 0 or snap.global_round == closed,
    )


def check_checkpoint_store(kind: str, state_dir: Path) -> None:
    """Load the main server's (kind "main_server") or a client's ("client")
    store in `state_dir` as the role does at its start; ConfigError naming the
    file when it cannot be read. A directory with no checkpoint passes."""
    store = open_store(kind, state_dir)
    assert isinstance(store, MainServerStore | ClientStore)
    try:
        store.load()
    except (StoreFormatError, OSError, *_MALFORMED) as err:
        raise _unreadable(f"{state_dir}/{store.DOC}", err) from None
