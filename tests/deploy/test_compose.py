"""docker-compose.yml is `fedsllm compose`'s output for the default scenario, and
the compose files it writes are checked against the code they launch: every
command parses with the real role's argument parser, the clients cover every
client id of the scenario, every address points at a service that binds it,
and the end of a run is ordered (no container is stopped by another's exit)."""

from __future__ import annotations

import importlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsllm.config import load_scenario
from fedsllm.deploy.compose import build_compose, compose_text, resolved_scenario_json
from fedsllm.roles import load_resolved_scenario

ROOT = Path(__file__).resolve().parents[2]
ROLES = {"fed_server", "main_server", "client"}


def _generate(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "compose.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsllm", "compose", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def checked_in() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_checked_in_file_is_the_generators_output(tmp_path) -> None:
    out = tmp_path / "compose.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsllm", "compose", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (ROOT / "docker-compose.yml").read_text(), (
        "docker-compose.yml is stale: regenerate it with `fedsllm compose --out docker-compose.yml`"
    )


@pytest.mark.parametrize("links", ["token", "tc"])
def test_yaml_text_is_the_document(links) -> None:
    scenario = load_scenario(None, ["clients.num_clients=2"])
    doc = build_compose(scenario, links=links, scenario_json=resolved_scenario_json(scenario))
    assert yaml.safe_load(compose_text(doc, "# head\n")) == doc


def _role_argv(service: dict) -> tuple[list[str], list[str]]:
    """(supervisor argv, role argv) of a service's command."""
    argv = list(service["command"])
    if argv[:3] == ["python", "-m", "fedsllm.deploy.supervise"]:
        cut = argv.index("--")
        return argv[3:cut], argv[cut + 1 :]
    return [], argv


def _parsed(service: dict):
    _, argv = _role_argv(service)
    assert argv[:2] == ["python", "-m"], argv
    module = importlib.import_module(f"{argv[2]}.__main__")
    return argv[2], module.parse_args(argv[3:])


def _check(compose: dict, num_clients: int, links: str) -> None:
    services = compose["services"]
    assert services["report"]["command"] == ["fedsllm", "report", "/data/run"]
    roles = {name: _parsed(s) for name, s in services.items() if name != "report"}
    assert {m for m, _ in roles.values()} == ROLES
    clients = sorted(n for n, (m, _) in roles.items() if m == "client")
    assert [int(roles[n][1].client_id) for n in clients] == list(range(num_clients))

    # Ports bound, and every address a role dials is bound by the service it names.
    bound = {}
    for name, (_, args) in roles.items():
        bound[name] = {
            getattr(args, a).rsplit(":", 1)[1]
            for a in ("bind", "control_bind")
            if getattr(args, a, None)
        }
    for name, (_, args) in roles.items():
        for attr in ("fed_address", "control_address", "main_address"):
            address = getattr(args, attr, None)
            if address:
                host, port = address.rsplit(":", 1)
                assert port in bound[host], (name, address)

    # Start order follows gRPC health; the end is ordered by the services themselves.
    for name in ("fed-server", "main-server"):
        check = services[name]["healthcheck"]["test"]
        assert check[1:4] == ["python", "-m", "fedsllm.wire.probe"]
        assert check[4].rsplit(":", 1)[1] in bound[name]
        supervisor, _ = _role_argv(services[name])
        assert supervisor[supervisor.index("--clients") + 1].split(",") == clients
    assert services["main-server"]["depends_on"] == {"fed-server": {"condition": "service_healthy"}}
    for name in clients:
        assert services[name]["depends_on"] == {
            "fed-server": {"condition": "service_healthy"},
            "main-server": {"condition": "service_healthy"},
        }
    assert services["report"]["depends_on"] == {
        n: {"condition": "service_completed_successfully"}
        for n in [*clients, "fed-server", "main-server"]
    }

    # One volume, the fed server's run directory; the other roles share nothing
    # but gRPC: a private work directory, the scenario fetched from the fed server.
    assert list(compose["volumes"]) == ["run-data"]
    for name, service in services.items():
        shared = name in ("fed-server", "report")
        volumes = [v for v in service.get("volumes", []) if isinstance(v, str)]
        assert volumes == (["run-data:/data"] if shared else []), name
        if name not in ("fed-server", "report"):
            assert roles[name][1].scenario_json is None, name
            assert roles[name][1].work_dir == f"/tmp/fedsllm/{name}", name
            assert "configs" not in service, name
    assert roles["fed-server"][1].run_dir == "/data/run"

    # Credentials: each role mounts its own token (the servers the tokens they
    # accept) from secrets/ next to the file, read-only, and must find it there.
    for name, service in services.items():
        stem = name.replace("-", "_")
        mounts = [v for v in service.get("volumes", []) if isinstance(v, dict)]
        server = name in ("fed-server", "main-server")
        expected = {} if name == "report" else {"token": f"./secrets/{stem}.token"}
        if server:
            expected["peers.json"] = f"./secrets/{stem}.peers.json"
        assert {m["target"].rsplit("/", 1)[1]: m["source"] for m in mounts} == expected, name
        for mount in mounts:
            assert mount["type"] == "bind" and mount["read_only"] is True, name
            assert mount["bind"] == {"create_host_path": False}, name
        env = service.get("environment", {})
        if name != "report":
            assert env["FEDSLLM_TOKEN_FILE"] == "/run/fedsllm/secrets/token", name
            assert ("FEDSLLM_PEER_TOKENS" in env) == server, name

    # Privileges only where tc runs.
    for name, service in services.items():
        tc = links == "tc" and name in clients
        assert service.get("cap_add", []) == (["NET_ADMIN"] if tc else []), name
        assert service.get("user", "") == ("root" if tc else ""), name
        assert ("--tc" in _role_argv(service)[0]) == tc, name


def test_checked_in_file_runs_the_default_scenario(checked_in) -> None:
    scenario = load_scenario(None)
    _check(checked_in, scenario.clients.num_clients, "token")
    path = _parsed(checked_in["services"]["fed-server"])[1].scenario_json
    assert load_scenario(ROOT / path.removeprefix("/app/")) == scenario
    assert "configs" not in checked_in


@pytest.mark.parametrize("links", ["token", "tc"])
def test_generated_file_carries_the_resolved_scenario(tmp_path, links) -> None:
    compose = _generate(tmp_path, "--clients", "2", "--rounds", "2", "--links", links)
    _check(compose, 2, links)
    scenario_file = tmp_path / "scenario.json"
    scenario_file.write_text(compose["configs"]["scenario"]["content"].replace("$$", "$"))
    scenario, scenario_hash = load_resolved_scenario(scenario_file)
    assert scenario.clients.num_clients == 2
    assert scenario.policy.max_rounds == 2
    assert scenario.link.backend == ("tc" if links == "tc" else "token")
    from fedsllm.launch import scenario_hash as hash_of

    assert scenario_hash == hash_of(scenario)
    fed = compose["services"]["fed-server"]
    assert fed["configs"] == [{"source": "scenario", "target": "/etc/fedsllm/scenario.json"}]
    assert _parsed(fed)[1].scenario_json == "/etc/fedsllm/scenario.json"
    assert json.loads(scenario_file.read_text())["scenario_hash"] == scenario_hash


def test_dockerfile_pins_torch_and_takes_its_index_as_an_arg() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}' in text
    assert "\nUSER fedsllm" in text


def test_compose_writes_each_services_token_next_to_the_file(tmp_path) -> None:
    from fedsllm.security.identity import Identity, TokenTable

    _generate(tmp_path, "--clients", "2")
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert sorted(p.name for p in secrets.iterdir()) == [
        "client_0.token", "client_1.token", "fed_server.peers.json", "fed_server.token",
        "main_server.peers.json", "main_server.token", "watcher.token",
    ]  # fmt: skip
    fed = TokenTable.from_identity_map(json.loads((secrets / "fed_server.peers.json").read_text()))
    main = TokenTable.from_identity_map(
        json.loads((secrets / "main_server.peers.json").read_text())
    )
    for stem, who in [("client_0", Identity.client(0)), ("client_1", Identity.client(1))]:
        token = (secrets / f"{stem}.token").read_text()
        assert fed.lookup(token) == who and main.lookup(token) == who
    main_token = (secrets / "main_server.token").read_text()
    assert fed.lookup(main_token) == Identity("main_server") and main.lookup(main_token) is None
    # The fed server's supervisor asks it with the fed server's own token.
    assert fed.lookup((secrets / "fed_server.token").read_text()) == Identity("fed_server")
    # An observer on the compose network follows the run as the read-only watcher;
    # no service mounts its token.
    watcher_token = (secrets / "watcher.token").read_text()
    assert fed.lookup(watcher_token) == Identity("watcher") and main.lookup(watcher_token) is None
    assert "watcher.token" not in (tmp_path / "compose.yml").read_text()
    # Tokens are never in the file itself.
    text = (tmp_path / "compose.yml").read_text()
    assert all(t not in text for t in fed.to_identity_map().values())
    # New tokens each time it is generated.
    _generate(tmp_path, "--clients", "2")
    assert (secrets / "client_0.token").read_text() != fed.token_for(Identity.client(0))


def test_compose_to_standard_output_says_no_secrets_were_written() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedsllm", "compose", "--clients", "2"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "./secrets/client_1.token" in proc.stdout
    assert "no secrets/ was written" in proc.stderr
