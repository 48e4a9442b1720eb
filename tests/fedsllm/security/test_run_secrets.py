"""fedsllm.security.run_secrets: what the launcher writes for each identity, and
the read-only watcher's credentials in a place of their own (RUN_DIR/watcher/),
so that following a run never needs the launcher's tokens."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedsllm.security.identity import Identity, TokenTable
from fedsllm.security.run_secrets import (
    WATCHER_DIR,
    prepare_run_secrets,
    read_launcher_security,
    read_watcher_security,
)

NAMES = ["fed_server", "main_server", "client_0", "client_1"]
WATCHER = Identity("watcher")


def _prepare(run_dir: Path, tls: bool):
    role_dirs = {n: run_dir / "roles" / n for n in NAMES}
    secrets = prepare_run_secrets(run_dir, NAMES, role_dirs, num_clients=2, tls=tls, insecure=False)
    return secrets, role_dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("tls", [False, True], ids=["tokens", "tls"])
def test_the_watcher_gets_its_own_private_directory(tmp_path: Path, tls: bool) -> None:
    secrets, role_dirs = _prepare(tmp_path, tls)
    watcher_dir = tmp_path / WATCHER_DIR
    assert _mode(watcher_dir) == 0o700
    expected = {"token"} | ({"ca.pem", "watcher.pem", "watcher.key"} if tls else set())
    assert {p.name for p in watcher_dir.iterdir()} == expected
    for path in watcher_dir.iterdir():
        assert _mode(path) == 0o600, path.name
    token = (watcher_dir / "token").read_text()
    assert secrets.tokens.lookup(token) == WATCHER
    # Only the fed server (where the telemetry is) accepts it; no role holds it.
    fed = TokenTable.from_identity_map(
        json.loads((role_dirs["fed_server"] / "secrets" / "peers.json").read_text())
    )
    main = TokenTable.from_identity_map(
        json.loads((role_dirs["main_server"] / "secrets" / "peers.json").read_text())
    )
    assert fed.lookup(token) == WATCHER and main.lookup(token) is None
    for name in NAMES:
        assert (role_dirs[name] / "secrets" / "token").read_text() != token
    # It is not the launcher's: that one can act for the launcher everywhere.
    launcher = read_launcher_security(tmp_path)
    assert launcher is not None and launcher.token != token


@pytest.mark.parametrize("tls", [False, True], ids=["tokens", "tls"])
def test_read_watcher_security_names_its_files(tmp_path: Path, tls: bool) -> None:
    _prepare(tmp_path, tls)
    security = read_watcher_security(tmp_path)
    assert security is not None
    token_file = tmp_path / WATCHER_DIR / "token"
    assert security.token == token_file.read_text()
    if tls:
        assert security.tls.identity == WATCHER
        assert security.credential() == (str(tmp_path / WATCHER_DIR / "watcher.pem"), "")
    else:
        assert security.tls is None
        assert security.credential() == (str(token_file), "")


def test_no_watcher_directory_reads_as_none(tmp_path: Path) -> None:
    assert read_watcher_security(tmp_path) is None
