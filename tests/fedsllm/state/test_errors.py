from __future__ import annotations

import grpc
import pytest

from fedsllm.state.errors import UPDATE_REFUSALS, DuplicateUpdateError, StoreFormatError
from fedsllm.wire.status import abort_for, refusal_of, status_for

EXPECTED_CODE = {
    # rejoin, then push again
    "not_joined": grpc.StatusCode.FAILED_PRECONDITION,
    # catch up with the latest global adapter
    "late": grpc.StatusCode.OUT_OF_RANGE,
    "round_closed": grpc.StatusCode.OUT_OF_RANGE,
    "not_open": grpc.StatusCode.OUT_OF_RANGE,
    "finished": grpc.StatusCode.OUT_OF_RANGE,
    # already counted: nothing to redo
    "duplicate": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.ALREADY_EXISTS,
}


@pytest.mark.parametrize("cls", sorted(UPDATE_REFUSALS.values(), key=lambda c: c.reason))
def test_the_projects_status_table_gives_each_refusal_its_meaning(cls) -> None:
    err = DuplicateUpdateError(1, 2, 0) if cls is DuplicateUpdateError else cls(1, 2, "x")
    assert status_for(err) == EXPECTED_CODE[cls.reason]
    assert str(err).startswith("client 1, round 2: ")


def test_not_joined_is_not_late() -> None:
    """The client rejoins on one and catches up on the other: never the same code."""
    assert EXPECTED_CODE.keys() == UPDATE_REFUSALS.keys()
    assert EXPECTED_CODE["not_joined"] != EXPECTED_CODE["late"]


class _Context:
    def __init__(self) -> None:
        self.trailing: tuple = ()
        self.aborted: tuple | None = None

    def set_trailing_metadata(self, md: tuple) -> None:
        self.trailing = md

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


class _RpcError(grpc.RpcError):
    def __init__(self, trailing: tuple) -> None:
        self._trailing = trailing

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize("reason", sorted(UPDATE_REFUSALS))
def test_a_refusal_carries_its_reason_word_to_the_client(reason: str) -> None:
    cls = UPDATE_REFUSALS[reason]
    err = DuplicateUpdateError(1, 2, 0) if cls is DuplicateUpdateError else cls(1, 2, "x")
    context = _Context()
    with pytest.raises(RuntimeError, match="aborted"):
        abort_for(context, err)
    assert context.aborted == (EXPECTED_CODE[reason], str(err))
    assert refusal_of(_RpcError(context.trailing)) == reason
    assert refusal_of(_RpcError(())) is None


def test_format_error_names_the_file_and_versions() -> None:
    err = StoreFormatError("run/state/ledger.json", 2, 1)
    assert "run/state/ledger.json" in str(err) and "version 2" in str(err)
    assert status_for(err) == grpc.StatusCode.FAILED_PRECONDITION


def test_format_error_blames_another_version_only_when_the_marker_names_one() -> None:
    """A damaged file (not JSON, no marker, the wrong kind) is not said to be
    another fedsllm version's; a marker of another version is."""
    damaged = [
        StoreFormatError("s/ledger.json", None, 1, "not JSON (Expecting value)"),
        StoreFormatError("s/ledger.json", None, 1, "no format_version field"),
        StoreFormatError("s/ledger.json", 1, 1, "kind 'x', not 'fed_server.ledger'"),
        StoreFormatError("s/a.safetensors", None, 1),
    ]
    for err in damaged:
        assert "another fedsllm version" not in str(err) and "damaged" in str(err), err
        assert str(err) == f"{err.path}: {err.problem}"
    for found in (2, "9"):
        err = StoreFormatError("s/ledger.json", found, 1)
        assert str(err).endswith("; it was written by another fedsllm version"), err
