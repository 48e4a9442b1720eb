"""`fedsllm compose --tls`: each service mounts the CA and its own certificate and
key only, and no role runs --insecure; without --tls every role asks for it."""

from __future__ import annotations

import stat

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.deploy.compose import build_compose

ROLES = ("fed-server", "main-server", "client-0", "client-1")


def _keys(service: dict) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if v.split(":")[0].endswith(".key")]


def test_each_service_gets_only_its_own_key() -> None:
    scenario = load_scenario(None, ["clients.num_clients=2"])
    doc = build_compose(scenario, tls_dir="./certs")
    for name in ROLES:
        service = doc["services"][name]
        stem = name.replace("-", "_")
        assert _keys(service) == [f"./certs/{stem}.key"]
        assert service["environment"]["FEDSLLM_TLS_KEY"].endswith(f"/{stem}.key")
        assert "--insecure" not in service["command"]
    assert _keys(doc["services"]["report"]) == []


def test_without_tls_every_role_asks_for_insecure() -> None:
    doc = build_compose(load_scenario(None, ["clients.num_clients=2"]))
    for name in ROLES:
        assert doc["services"][name]["command"][-1] == "--insecure"


def test_compose_tls_issues_certificates_next_to_the_file(tmp_path) -> None:
    out = tmp_path / "docker-compose.yml"
    assert main(["compose", "--tls", "--clients", "2", "--out", str(out)]) == 0
    certs = tmp_path / "certs"
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert (certs / "client_1.key").is_file() and (certs / "ca.pem").is_file()
    assert "FEDSLLM_TLS_KEY: /run/fedsllm/tls/client_1.key" in out.read_text()


def test_compose_out_that_is_a_directory_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "d"
    out.mkdir()
    for flags in ([], ["--tls"]):
        assert main(["compose", *flags, "--clients", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out: is a directory" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not any(out.iterdir())
