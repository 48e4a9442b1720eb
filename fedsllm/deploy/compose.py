"""The docker compose file of a scenario, as a plain dict, and its YAML text.

`fedsllm compose` writes it; the checked-in docker-compose.yml is
`compose_text(build_compose(default scenario))`, held equal by a test.

Layout (compose v2):
- fed-server (with the controller), main-server, client-0..K-1, report;
- start order follows gRPC health: the main server waits for the fed
  server's health, clients for both servers';
- every container exits on its own, in order: clients when their last round
  is done; both servers (fedsllm.deploy.supervise) once the fed server says
  the run is finished and no client container is left; then the report,
  which depends on every other service having completed successfully.
  `docker compose up --abort-on-container-failure` therefore returns 0 once
  the report is written and non-zero as soon as any role fails; nothing is
  stopped by another container's exit, so nothing races at the end;
- roles share nothing but gRPC: only the fed server reads the scenario (the
  packaged default.toml, or the resolved scenario carried in this file as a
  config); the main server and the clients fetch it, and the base weights,
  from the fed server, and keep a private work directory in their container;
- one volume, run-data: the fed server's run directory (/data/run), where the
  whole run is assembled (trace, adapters) and the report service writes the
  report;
- the pretrained base of the default scenario is baked into the image
  (Dockerfile), so the fed server does not pretrain at start-up;
- links token: paced in process, no privileges, every role as user fedsllm;
  links tc: each client runs as root with NET_ADMIN and shapes its own
  uplink (eth0 egress) and downlink (ifb) with htb (fedsllm.deploy.links).
"""

from __future__ import annotations

import json
from typing import Any

from fedsllm.deploy.links import CONTROL_PORT

IMAGE = "fedsllm:latest"
FED_PORT = 50051
MAIN_PORT = 50052
RUN_DIR = "/data/run"
VOLUME = "run-data"
DEFAULT_SCENARIO_PATH = "/app/fedsllm/scenarios/default.toml"
SCENARIO_CONFIG_PATH = "/etc/fedsllm/scenario.json"
LINKS = ("token", "tc")
UP_COMMAND = "docker compose up --build --abort-on-container-failure"


def client_service(k: int) -> str:
    return f"client-{k}"


def _healthcheck(port: int) -> dict[str, Any]:
    return {
        "test": ["CMD", "python", "-m", "fedsllm.wire.probe", f"127.0.0.1:{port}"],
        "interval": "2s",
        "timeout": "10s",
        "retries": 150,
    }


def _build() -> dict[str, Any]:
    return {
        "context": ".",
        "args": {"TORCH_INDEX_URL": "${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"},
    }


TLS_MOUNT = "/run/fedsllm/tls"
"""Where a container finds its own CA, certificate and key (compose --tls)."""


def tls_service(cert_dir: str, stem: str) -> dict[str, Any]:
    """The environment and read-only mounts that give one service its own TLS
    files only: the CA, `stem`.pem and `stem`.key from `cert_dir` (the
    directory `fedsllm certs` wrote, relative to the compose file)."""
    files = {"ca": "ca.pem", "cert": f"{stem}.pem", "key": f"{stem}.key"}
    return {
        "environment": {
            f"FEDSLLM_TLS_{field.upper()}": f"{TLS_MOUNT}/{name}" for field, name in files.items()
        },
        "volumes": [f"{cert_dir}/{name}:{TLS_MOUNT}/{name}:ro" for name in files.values()],
    }


SECRETS_DIR = "./secrets"
"""Per-service tokens, next to the compose file (written by `fedsllm compose
--out`, never part of the file: the checked-in one references them)."""
SECRETS_MOUNT = "/run/fedsllm/secrets"
"""Where a container finds its own token (and a server its peers' tokens)."""
SERVER_SERVICES = ("fed-server", "main-server")


def token_service(secrets_dir: str, stem: str, server: bool) -> dict[str, Any]:
    """The environment and read-only mounts that give one service its own token
    (`stem`.token) and, for a server, the tokens it accepts (`stem`.peers.json)
    from `secrets_dir` (fedsllm.security.run_secrets.write_compose_secrets).
    A missing file is an error of `docker compose up` (create_host_path: false),
    never an empty directory mounted in its place."""
    files = {"FEDSLLM_TOKEN_FILE": (f"{stem}.token", "token")}
    if server:
        files["FEDSLLM_PEER_TOKENS"] = (f"{stem}.peers.json", "peers.json")
    return {
        "environment": {var: f"{SECRETS_MOUNT}/{target}" for var, (_, target) in files.items()},
        "volumes": [
            {
                "type": "bind",
                "source": f"{secrets_dir}/{source}",
                "target": f"{SECRETS_MOUNT}/{target}",
                "read_only": True,
                "bind": {"create_host_path": False},
            }
            for source, target in files.values()
        ],
    }


def build_compose(
    scenario: Any,
    *,
    links: str = "token",
    scenario_json: str | None = None,
    tls_dir: str | None = None,
    secrets_dir: str = SECRETS_DIR,
) -> dict[str, Any]:
    """The compose document for `scenario` with `links` (token or tc).

    `scenario_json` is the resolved scenario as the fed server reads it (with
    its scenario_hash); None means the packaged default.toml, read from the
    image. It travels inside the compose file as a config, never as a volume.
    Every service but the report gets credentials of its own, mounted
    read-only: with `tls_dir` its certificate and key, else its token from
    `secrets_dir` (and the servers the tokens they accept), so no container
    can act as another.
    """
    if links not in LINKS:
        raise ValueError(f"links must be one of {LINKS}, got {links!r}")
    num_clients = scenario.clients.num_clients
    clients = [client_service(k) for k in range(num_clients)]
    scenario_path = DEFAULT_SCENARIO_PATH if scenario_json is None else SCENARIO_CONFIG_PATH
    configs = (
        [] if scenario_json is None else [{"source": "scenario", "target": SCENARIO_CONFIG_PATH}]
    )

    restart = restart_policy(scenario.run.max_restarts)

    def role(command: list[str], **extra: Any) -> dict[str, Any]:
        service: dict[str, Any] = {"image": IMAGE, "build": _build(), "restart": restart}
        service.update(extra)
        service["command"] = command
        return service

    stop_when_done = ["python", "-m", "fedsllm.deploy.supervise", "--stop-when-done",
                      f"127.0.0.1:{FED_PORT}", "--clients", ",".join(clients), "--"]  # fmt: skip
    fed_local = f"fed-server:{FED_PORT}"
    # Containers bind 0.0.0.0 and dial service names: plain gRPC there must be
    # asked for (fedsllm.security.credentials.check_insecure), and is logged.
    # With tls_dir (compose --tls) every channel is mutual TLS instead.
    insecure = [] if tls_dir is not None else ["--insecure"]
    fed_command = ["python", "-m", "fed_server", "--scenario", scenario_path,
                   "--run-dir", RUN_DIR, "--bind", f"0.0.0.0:{FED_PORT}",
                   "--control-bind", f"0.0.0.0:{CONTROL_PORT}", *insecure]  # fmt: skip
    main_command = ["python", "-m", "main_server", "--work-dir", "/tmp/fedsllm/main-server",
                    "--bind", f"0.0.0.0:{MAIN_PORT}", "--fed-address", fed_local,
                    *insecure]  # fmt: skip
    services: dict[str, Any] = {
        "fed-server": role(
            stop_when_done + fed_command,
            **({"configs": configs} if configs else {}),
            volumes=[f"{VOLUME}:/data"],
            healthcheck=_healthcheck(FED_PORT),
        ),
        "main-server": role(
            [*stop_when_done[:4], fed_local, *stop_when_done[5:]] + main_command,
            depends_on={"fed-server": {"condition": "service_healthy"}},
            healthcheck=_healthcheck(MAIN_PORT),
        ),
    }
    for k, name in enumerate(clients):
        command = ["python", "-m", "client", "--work-dir", f"/tmp/fedsllm/{name}",
                   "--client-id", str(k),
                   "--fed-address", fed_local, "--control-address", f"fed-server:{CONTROL_PORT}",
                   "--main-address", f"main-server:{MAIN_PORT}", *insecure]  # fmt: skip
        extra: dict[str, Any] = {}
        if links == "tc":
            command = ["python", "-m", "fedsllm.deploy.supervise", "--tc", "--", *command]
            extra = {"user": "root", "cap_add": ["NET_ADMIN"]}
        services[name] = role(
            command,
            depends_on={
                "fed-server": {"condition": "service_healthy"},
                "main-server": {"condition": "service_healthy"},
            },
            **extra,
        )
    services["report"] = role(
        ["fedsllm", "report", RUN_DIR],
        restart="no",  # it runs once, after every role completed
        volumes=[f"{VOLUME}:/data"],
        depends_on={
            name: {"condition": "service_completed_successfully"}
            for name in [*clients, "fed-server", "main-server"]
        },
    )
    for name, service in services.items():
        if name == "report":
            continue  # reads the volume, talks to nobody
        stem = name.replace("-", "_")
        if tls_dir is not None:
            own = tls_service(tls_dir, stem)
        else:
            own = token_service(secrets_dir, stem, name in SERVER_SERVICES)
        service["environment"] = {**service.get("environment", {}), **own["environment"]}
        service["volumes"] = [*service.get("volumes", []), *own["volumes"]]
    doc: dict[str, Any] = {"name": "fedsllm", "services": services, "volumes": {VOLUME: {}}}
    if scenario_json is not None:
        doc["configs"] = {"scenario": {"content": scenario_json}}
    return doc


def resolved_scenario_json(scenario: Any) -> str:
    """The scenario as the roles read it (`fedsllm.roles.load_resolved_scenario`),
    with `$` escaped from compose's interpolation."""
    from fedsllm.launch import scenario_hash

    doc = {**scenario.to_dict(), "scenario_hash": scenario_hash(scenario)}
    return json.dumps(doc, indent=2, sort_keys=True).replace("$", "$$") + "\n"


def restart_policy(max_restarts: int) -> str:
    """Every role's compose restart policy: the engine starts a role that exits non-zero
    again, as `fedsllm run --restart on-failure` does (a client that exits 0 is done),
    at most run.max_restarts times, so a role that cannot run still fails `up`.
    (Docker reads on-failure:0 as "no limit", so 0 restarts is "no".)"""
    return f"on-failure:{max_restarts}" if max_restarts > 0 else "no"


def header(scenario: Any, links: str, tls: bool = False) -> str:
    """The comment on top of the file: what it runs and how."""
    secrets = (
        ""
        if tls
        else (
            "# Each service mounts its own token from secrets/ next to this file, which\n"
            "# `fedsllm compose --out FILE` writes and which is never checked in: create it\n"
            "# first (for the checked-in file: `fedsllm compose --out docker-compose.yml`,\n"
            "# which rewrites it unchanged); without it `up` refuses to start (bind source\n"
            "# path does not exist).\n"
        )
    )
    return (
        "# Generated by `fedsllm compose` (see --help): regenerate rather than edit.\n"
        f"# Scenario {scenario.name!r}: fed server (with the controller), main server and\n"
        f"# {scenario.clients.num_clients} clients, links {links}.\n"
        f"{secrets}"
        "# Run it with\n"
        "#\n"
        f"#   {UP_COMMAND}\n"
        "#\n"
        "# It returns 0 once the report is in the run-data volume (/data/run/report.md),\n"
        "# non-zero when a role fails for good: each is restarted on failure, at most\n"
        f"# {scenario.run.max_restarts} times (run.max_restarts). Copy the run directory out with\n"
        "#   docker compose cp fed-server:/data/run ./run\n"
        "# Build behind a package mirror: TORCH_INDEX_URL= docker compose build\n"
    )


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain = text and all(c.isalnum() or c in "-_./:" for c in text) and text[0] not in "-:"
    plain = plain and text.lower() not in {"true", "false", "yes", "no", "on", "off", "null"}
    plain = plain and not text.replace(".", "").replace(":", "").isdigit()
    return text if plain else json.dumps(text)


def _emit(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                if indent == 1 and lines:
                    lines.append("")  # a blank line between services
                lines.append(f"{pad}{key}:")
                lines += _emit(item, indent + 1)
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list) and all(not isinstance(i, dict | list) for i in item):
                lines.append(f"{pad}{key}: [{', '.join(_scalar(i) for i in item)}]")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}:")
                lines += _emit(item, indent + 1)
            elif isinstance(item, str) and "\n" in item:
                lines.append(f"{pad}{key}: |")
                lines += [
                    f"{pad}  {line}" if line else "" for line in item.rstrip("\n").split("\n")
                ]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                sub = _emit(item, indent + 1)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def compose_text(doc: dict[str, Any], head: str = "") -> str:
    """YAML for `doc` in its own key order (block mappings, flow lists of scalars,
    literal blocks for multi-line strings)."""
    body = []
    for i, (key, value) in enumerate(doc.items()):
        if i:
            body.append("")
        body += _emit({key: value}, 0)
    return head + ("\n" if head else "") + "\n".join(body) + "\n"
