"""Roles that share nothing but gRPC, end to end: every role but the fed server
starts from the fed server's address and a private work directory, fetches the
scenario and the (pretrained) base over the wire, and sends the main server's
adapter to the fed server; the fed server's run directory alone then serves
`fedsllm report` and `fedsllm export`."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.e2e.conftest import fedsllm, overrides, read_json

pytestmark = pytest.mark.slow

ROLES = ("main_server", "client_0", "client_1")
REPORT_FILES = ("report.md", "report.json", "report_delay.png", "report_loss.png")


def _run(out, cwd, *extra: str):
    return fedsllm(
        "run",
        *extra,
        "--clients",
        "2",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--quiet",
        "--out",
        str(out),
        # A pretrained base (a few steps): the roles fetch it from the fed server.
        *overrides("model.pretrain_steps=10"),
        cwd=cwd,
    )


def _check_private_dirs_and_adapters(out) -> None:
    summary = read_json(out / "summary.json")
    assert summary["ok"] is True, summary.get("failed")
    served = list((out / "base").glob("*.safetensors"))
    assert len(served) == 1
    base_hash = served[0].stem
    for role in ROLES:
        private = out / "roles" / role
        # Each role's own telemetry spool and its copy of the base, fetched over gRPC.
        assert (private / "spool").is_dir(), role
        fetched = private / "base" / f"{base_hash}.safetensors"
        assert fetched.read_bytes() == served[0].read_bytes(), role
    logs = (out / "logs" / "fed_server.log").read_text()
    assert f"main server joined (base {base_hash})" in logs
    # The main server's adapter reached the fed server at the last checkpoint and at the end.
    assert (out / "adapters" / "server_round1.safetensors").is_file()
    assert (out / "adapters" / "server.safetensors").is_file()
    assert "server adapter final" in logs


def _report_and_export_from_the_run_dir_alone(out, tmp_path, monkeypatch) -> None:
    shutil.rmtree(out / "roles")
    for name in REPORT_FILES:
        (out / name).unlink()
    # No pretrain cache either: export takes the base the fed server kept.
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    monkeypatch.setenv("FEDSLLM_CACHE", str(empty_cache))
    report = fedsllm("report", str(out), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    exported = fedsllm("export", str(out), str(tmp_path / "export"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "export" / "adapter_model.safetensors").is_file()
    assert not any(empty_cache.iterdir())


def test_loopback_roles_share_nothing_but_grpc(tmp_path, cache_dir, monkeypatch) -> None:
    out = tmp_path / "run"
    proc = _run(out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_private_dirs_and_adapters(out)
    _report_and_export_from_the_run_dir_alone(out, tmp_path, monkeypatch)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_netns_roles_with_private_dirs_complete_the_run(
    tmp_path, cache_dir, monkeypatch, netns_run
) -> None:
    from fedsllm.link.netns import project_footprint

    out = tmp_path / "run"
    run_id = netns_run
    before = project_footprint(run_id)
    proc = _run(out, tmp_path, "--network", "netns")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert project_footprint(run_id) == before
    _check_private_dirs_and_adapters(out)
    report = read_json(out / "report.json")
    assert report["rounds"] and len(report["rounds"]) == 2
    _report_and_export_from_the_run_dir_alone(out, tmp_path, monkeypatch)
