"""docker-compose.yml is checked against the code it launches (no Docker engine
runs here): every command parses with the real role's argument parser, the
clients cover every client id of the scenario, and every address points at a
service that binds it."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

from fedsllm.config import load_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> list[str]:
    return shlex.split(service["command"])


def _parsed(service: dict):
    argv = _command(service)
    assert argv[:2] == ["python", "-m"], argv
    module = importlib.import_module(f"{argv[2]}.__main__")
    return argv[2], module.parse_args(argv[3:])


def test_every_role_command_parses(compose) -> None:
    roles = {}
    for name, service in compose["services"].items():
        if name == "report":
            assert _command(service)[:2] == ["fedsllm", "report"]
            continue
        module, args = _parsed(service)
        roles[name] = (module, args)
    assert {m for m, _ in roles.values()} == {"fed_server", "main_server", "client"}


def test_clients_match_the_scenario(compose) -> None:
    ids = []
    scenario_paths = set()
    for service in compose["services"].values():
        if "python" not in _command(service)[:1]:
            continue
        module, args = _parsed(service)
        scenario_paths.add(args.scenario_json)
        if module == "client":
            ids.append(args.client_id)
    (path,) = scenario_paths
    local = ROOT / path.removeprefix("/app/")
    scenario = load_scenario(local)
    assert sorted(ids) == list(range(scenario.clients.num_clients))


def test_addresses_point_at_bound_services(compose) -> None:
    services = compose["services"]
    bound: dict[str, set[str]] = {}
    for name, service in services.items():
        if name == "report":
            continue
        module, args = _parsed(service)
        ports = set()
        for attr in ("bind", "control_bind"):
            if getattr(args, attr, None):
                ports.add(getattr(args, attr).rsplit(":", 1)[1])
        bound[name] = ports
        check = service.get("healthcheck", {}).get("test", [])
        if module != "client":
            assert check[1:4] == ["python", "-m", "fedsllm.wire.probe"]
            assert check[4].rsplit(":", 1)[1] in ports
    for name, service in services.items():
        if name == "report" or _parsed(service)[0] != "client":
            continue
        _, args = _parsed(service)
        for address in (args.fed_address, args.control_address, args.main_address):
            host, port = address.rsplit(":", 1)
            assert host in services, address
            assert port in bound[host], address
        assert set(service["depends_on"]) == {"fed-server", "main-server"}
    _, main_args = _parsed(services["main-server"])
    host, port = main_args.fed_address.rsplit(":", 1)
    assert port in bound[host]  # the main server aligns its clock with the fed server's
    assert set(services["main-server"]["depends_on"]) == {"fed-server"}
    report_deps = set(services["report"]["depends_on"])
    assert report_deps == {n for n in services if n.startswith("client-")}


def test_dockerfile_pins_the_cpu_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text
    assert "download.pytorch.org/whl/cpu" in text
