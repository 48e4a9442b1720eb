from __future__ import annotations

import grpc
import pytest

from fedsllm.state.errors import UPDATE_REFUSALS, DuplicateUpdateError, StoreFormatError
from fedsllm.wire.status import status_for


@pytest.mark.parametrize("cls", sorted(UPDATE_REFUSALS.values(), key=lambda c: c.reason))
def test_the_projects_status_table_maps_every_refusal(cls) -> None:
    err = DuplicateUpdateError(1, 2, 0) if cls is DuplicateUpdateError else cls(1, 2, "x")
    assert status_for(err) == grpc.StatusCode.FAILED_PRECONDITION
    assert str(err).startswith("client 1, round 2: ")


def test_format_error_names_the_file_and_versions() -> None:
    err = StoreFormatError("run/state/ledger.json", 2, 1)
    assert "run/state/ledger.json" in str(err) and "version 2" in str(err)
    assert status_for(err) == grpc.StatusCode.FAILED_PRECONDITION
