"""Typed refusals of the state stores and of the round ledger.

Every class subclasses fedsllm.errors.StateError, so the project's one status
table (fedsllm/wire/status.py) maps them all (FAILED_PRECONDITION today) with
no edit. Each refusal of a push also carries a stable `reason` word, so a
caller, or a later table that gives each a code of its own, can tell "not
joined" (rejoin) from "late" and "round closed" (catch up) without parsing
the message.
"""

from __future__ import annotations

from fedsllm.errors import StateError


class StoreFormatError(StateError):
    """A persisted state file is unreadable, or of another format version.

    `path` names the file, `found` the version it holds (None: none at all).
    Only a file whose format marker names another version is said to be
    another fedsllm version's; one that cannot be parsed, or lacks what a
    state file holds, is said to be damaged. `problem` is the message
    without the path."""

    def __init__(self, path: str, found: object, expected: int, reason: str = "") -> None:
        self.path = path
        self.found = found
        self.expected = expected
        detail = reason or f"format version {found!r}, this build reads version {expected}"
        if found is not None and str(found) != str(expected):
            why = "it was written by another fedsllm version"
        else:
            why = "the file is damaged (truncated or overwritten) or was not written by fedsllm"
        self.problem = f"{detail}; {why}"
        super().__init__(f"{path}: {self.problem}")


class UpdateRefused(StateError):
    """Base of every refused push; `reason` is one stable word per subclass."""

    reason = "refused"

    def __init__(self, client_id: int, round_index: int, message: str) -> None:
        self.client_id = client_id
        self.round_index = round_index
        super().__init__(f"client {client_id}, round {round_index}: {message}")


class NotJoinedError(UpdateRefused):
    """The client is not a member (never joined, or the server lost it): rejoin."""

    reason = "not_joined"


class LateUpdateError(UpdateRefused):
    """The round's deadline passed and it closes with the updates at hand
    (at least min_clients did report): this one is left out. Catch up."""

    reason = "late"


class RoundClosedError(UpdateRefused):
    """The round was already aggregated without this update. Catch up."""

    reason = "round_closed"


class RoundNotOpenError(UpdateRefused):
    """A push for a round the server has not opened yet (the client is ahead)."""

    reason = "not_open"


class RunFinishedError(UpdateRefused):
    """Every round of the run is closed."""

    reason = "finished"


class DuplicateUpdateError(UpdateRefused):
    """This client's update for this round is already accepted under another
    attempt; the round counts one update per client. `accepted_attempt` says
    which one counts."""

    reason = "duplicate"

    def __init__(self, client_id: int, round_index: int, accepted_attempt: int) -> None:
        self.accepted_attempt = accepted_attempt
        super().__init__(
            client_id,
            round_index,
            f"an update is already accepted (attempt {accepted_attempt}); "
            "the round counts one update per client",
        )


class ConflictingUpdateError(UpdateRefused):
    """The same (client, round, attempt) arrived again with other content."""

    reason = "conflict"


class MembershipError(StateError):
    """A join that contradicts the membership (another num_samples)."""


UPDATE_REFUSALS: dict[str, type[UpdateRefused]] = {
    cls.reason: cls
    for cls in (
        NotJoinedError,
        LateUpdateError,
        RoundClosedError,
        RoundNotOpenError,
        RunFinishedError,
        DuplicateUpdateError,
        ConflictingUpdateError,
    )
}
"""reason word -> class: a client that receives the word (e.g. in the status's
trailing metadata) knows which refusal it met without parsing the message."""
