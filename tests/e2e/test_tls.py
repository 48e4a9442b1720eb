"""`fedsllm run --tls`: a per-run CA, each role given only its own certificate and
key, every channel mutual TLS, and the report says so; plain gRPC on a
non-loopback address is refused unless --insecure is given."""

from __future__ import annotations

import stat

from tests.e2e.conftest import fedsllm, overrides, read_json


def test_run_with_tls_completes_and_each_role_holds_only_its_own_key(tmp_path) -> None:
    out = tmp_path / "run"
    proc = fedsllm(
        "run", "--tls", "--clients", "2", "--rounds", "1", "--local-steps", "2", "--quiet",
        "--out", str(out), *overrides(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(out / "summary.json")["ok"] is True
    for role in ("fed_server", "main_server"):
        assert "channels: mutual TLS" in (out / "logs" / f"{role}.log").read_text()
    assert "- channels: TLS: on" in (out / "report.md").read_text()
    secrets = out / "roles" / "client_1" / "secrets"
    assert sorted(p.name for p in secrets.iterdir()) == [
        "ca.pem", "client_1.key", "client_1.pem", "token",
    ]  # fmt: skip
    for path in (secrets, out / "launcher"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "client_1.key").stat().st_mode) == 0o600
    # No secret on any command line the launcher logged.
    token = (secrets / "token").read_text().strip()
    assert token not in proc.stderr and token not in proc.stdout
    for log in (out / "logs").iterdir():
        assert token not in log.read_text()


def test_plain_grpc_on_a_non_loopback_address_needs_insecure(tmp_path) -> None:
    out = tmp_path / "run"
    proc = fedsllm(
        "run", "--clients", "1", "--rounds", "1", "--local-steps", "1", "--quiet",
        "--out", str(out), *overrides("run.host='0.0.0.0'"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--insecure" in proc.stderr
    assert not (out / "logs" / "fed_server.log").exists()
