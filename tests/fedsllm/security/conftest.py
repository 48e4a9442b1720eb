"""Certificate directories shared by the security tests (issued once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsllm.security.certs import write_certs


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "certs"
    write_certs(out, num_clients=3)
    return out


@pytest.fixture(scope="session")
def other_cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA issuing the same identities."""
    out = tmp_path_factory.mktemp("pki_other") / "certs"
    write_certs(out, num_clients=3)
    return out
