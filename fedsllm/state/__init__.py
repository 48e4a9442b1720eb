"""Each role's persistent state (stores), the round rules (ledger) and the audit.

Public names are re-exported here; see store.py, ledger.py, audit.py,
format.py and errors.py for what each part does and leaves to the roles, and
check.py for the read-only checks a launcher makes before it resumes a run.
"""

from fedsllm.state.durable import DurableRounds
from fedsllm.state.errors import (
    UPDATE_REFUSALS,
    ConflictingUpdateError,
    DuplicateUpdateError,
    LateUpdateError,
    MembershipError,
    NotJoinedError,
    RoundClosedError,
    RoundNotOpenError,
    RunFinishedError,
    StoreFormatError,
    UpdateRefused,
)
from fedsllm.state.format import FORMAT_VERSION, tensor_digest
from fedsllm.state.ledger import Acceptance, JoinInfo, RoundLedger, RoundRecord, SubmitResult
from fedsllm.state.store import (
    STORE_KINDS,
    ClientSnapshot,
    ClientStore,
    DiskBackend,
    FedServerSnapshot,
    FedServerStore,
    InMemoryBackend,
    MainServerSnapshot,
    MainServerStore,
    StateBackend,
    UpdateKey,
    open_backend,
    open_store,
)

__all__ = [
    "FORMAT_VERSION",
    "STORE_KINDS",
    "UPDATE_REFUSALS",
    "Acceptance",
    "ClientSnapshot",
    "ClientStore",
    "ConflictingUpdateError",
    "DiskBackend",
    "DurableRounds",
    "DuplicateUpdateError",
    "FedServerSnapshot",
    "FedServerStore",
    "InMemoryBackend",
    "JoinInfo",
    "LateUpdateError",
    "MainServerSnapshot",
    "MainServerStore",
    "MembershipError",
    "NotJoinedError",
    "RoundClosedError",
    "RoundLedger",
    "RoundNotOpenError",
    "RoundRecord",
    "RunFinishedError",
    "StateBackend",
    "StoreFormatError",
    "SubmitResult",
    "UpdateKey",
    "UpdateRefused",
    "open_backend",
    "open_store",
    "tensor_digest",
]
