"""The roles as a new user starts them by hand (README "Running across
machines"): a bind address in use, credentials the fed server refuses, a
certificate of another client. Each exits 2 with one line naming the flag,
variable or file, and no traceback (they were gRPC tracebacks, exit 1).

Every process here is started on free ports and stopped by its own pid."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsllm.config import load_scenario
from fedsllm.launch import write_scenario

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {
    "client/0": "client-0-token-for-the-refusal-tests",
    "client/1": "client-1-token-for-the-refusal-tests",
    "main_server": "main-server-token-for-the-refusal-tests",
}
HANG_GUARD_S = 180.0


def _env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDSLLM_")}
    return {**base, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def _role(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def _refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scenario = load_scenario(
        None, ["model.pretrain_steps=0", "data.seq_len=16", "clients.num_clients=2"]
    )
    return write_scenario(tmp_path_factory.mktemp("scenario"), scenario)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, scenario_file: Path) -> Iterator[dict]:
    """`python -m fed_server` on free ports, accepting TOKENS; its addresses."""
    tmp = tmp_path_factory.mktemp("fed")
    peers = tmp / "peers.json"
    peers.write_text(json.dumps(TOKENS))
    log_path = tmp / "fed_server.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fed_server",
                "--scenario",
                str(scenario_file),
                "--run-dir",
                str(tmp / "run"),
                "--bind",
                "127.0.0.1:0",
                "--control-bind",
                "127.0.0.1:0",
                "--telemetry-wait-s",
                "0.5",
            ],  # fmt: skip
            cwd=ROOT,
            env=_env({"FEDSLLM_PEER_TOKENS": str(peers)}),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        ports: dict[str, str] = {}
        deadline = time.monotonic() + HANG_GUARD_S
        while len(ports) < 2:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            text = log_path.read_text()
            if found := re.search(r"serving FedServer on port (\d+)", text):
                ports["fed"] = f"127.0.0.1:{found[1]}"
            if found := re.search(r"serving [\w., ]*Controller on port (\d+)", text):
                ports["control"] = f"127.0.0.1:{found[1]}"
            time.sleep(0.1)
        yield ports
    finally:
        proc.terminate()  # by its own pid
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("flag", "env_var"),
    [("--bind", None), ("--control-bind", None), (None, "FEDSLLM_FED_BIND")],
)
def test_fed_server_bind_in_use_exits_2_naming_it(
    scenario_file, busy_port, tmp_path, flag, env_var
) -> None:
    address = f"127.0.0.1:{busy_port}"
    args = [flag, address] if flag else []
    env = {env_var: address} if env_var else {}
    run_dir = tmp_path / "runs" / "refused"
    proc = _role(
        "fed_server", env, "--scenario", str(scenario_file), "--run-dir", str(run_dir), *args
    )
    _refused(proc, f"{flag or env_var}: address in use, got '{address}'")
    assert not (tmp_path / "runs").exists()  # the refused start made nothing that stays


def test_main_server_bind_in_use_exits_2_naming_it(fed, busy_port, tmp_path) -> None:
    address = f"127.0.0.1:{busy_port}"
    proc = _role(
        "main_server",
        {"FEDSLLM_TOKEN": TOKENS["main_server"]},
        "--fed-address", fed["fed"], "--work-dir", str(tmp_path / "work"), "--bind", address,
    )  # fmt: skip
    _refused(proc, f"--bind: address in use, got '{address}'")
    assert not (tmp_path / "work").exists()


def test_main_server_without_credentials_exits_2_naming_the_token(fed, tmp_path) -> None:
    work = tmp_path / "work"
    proc = _role("main_server", {}, "--fed-address", fed["fed"], "--work-dir", str(work))
    _refused(
        proc,
        f"FEDSLLM_TOKEN: not set, and the fed server at {fed['fed']} refuses a role without "
        "credentials (UNAUTHENTICATED: ",
    )
    assert not work.exists()


def test_main_server_with_a_clients_token_exits_2_naming_the_token(fed, tmp_path) -> None:
    proc = _role(
        "main_server",
        {"FEDSLLM_TOKEN": TOKENS["client/0"]},
        "--fed-address", fed["fed"], "--work-dir", str(tmp_path),
    )  # fmt: skip
    _refused(
        proc,
        f"FEDSLLM_TOKEN: the fed server at {fed['fed']} refused it (PERMISSION_DENIED: client/0 "
        "may not JoinMainServer: only main_server may); it is another role's token",
    )


def test_client_with_another_clients_token_exits_2_naming_the_token(fed, tmp_path) -> None:
    proc = _role(
        "client",
        {"FEDSLLM_TOKEN": TOKENS["client/1"]},
        "--client-id", "0", "--fed-address", fed["fed"], "--control-address", fed["control"],
        "--main-address", "127.0.0.1:1", "--work-dir", str(tmp_path),
    )  # fmt: skip
    _refused(
        proc,
        "FEDSLLM_TOKEN: a server of this run refused it (PERMISSION_DENIED: client/1 may not "
        "Register as client 0: a client acts only as itself); it is another role's token",
    )


def test_client_with_another_clients_certificate_exits_2_before_connecting(tmp_path) -> None:
    from fedsllm.security.certs import write_certs

    certs = tmp_path / "certs"
    write_certs(certs, num_clients=2)
    proc = _role(
        "client",
        {},
        "--client-id", "0", "--fed-address", "127.0.0.1:1", "--work-dir", str(tmp_path / "w"),
        "--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client_1.pem"),
        "--tls-key", str(certs / "client_1.key"),
    )  # fmt: skip
    _refused(
        proc,
        "--tls-cert: is the certificate of client/1, but this role is client/0 (--client-id 0); "
        f"give client/0's (client_0.pem and .key of fedsllm certs), got "
        f"'{certs / 'client_1.pem'}'",
    )


def test_the_fed_port_serves_the_controller_too(fed) -> None:
    """A client told only the fed address (README: --control-address defaults
    to it) registers there: the controller was served on the control port
    alone, and such a client died with UNIMPLEMENTED at Register."""
    from fedsllm.wire.rpc import CONTROLLER_SERVICE, Security, wait_healthy

    security = Security(token=TOKENS["client/0"])
    for port in ("fed", "control"):  # each says SERVING for the Controller
        wait_healthy(fed[port], 30, service=CONTROLLER_SERVICE, security=security)


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("fed_server", ["--run-dir"]),
        ("fed_server.controller_main", []),
        ("client", ["--client-id", "0", "--fed-address", "127.0.0.1:1", "--work-dir"]),
    ],
)
def test_a_scenario_file_that_is_not_json_exits_2_naming_it(tmp_path, module, extra) -> None:
    """Were tracebacks (JSONDecodeError, exit 1): the roles read --scenario through
    fedsllm.roles.load_resolved_scenario, which now says what is wrong with the file."""
    bad = tmp_path / "scenario.json"
    bad.write_text("{not json")
    args = [*extra, str(tmp_path)] if extra else []
    proc = _role(module, {}, "--scenario", str(bad), *args)
    _refused(proc, "--scenario: not valid JSON (Expecting property name")
    assert f"got '{bad}'" in proc.stderr


def test_fed_server_on_a_damaged_store_exits_2_naming_the_file(scenario_file, tmp_path) -> None:
    """Was a traceback ending in StoreFormatError, exit 1, blaming "another fedsllm
    version" for a truncated file: now one line naming the file and what is
    wrong with it, exit 2, before the fed server writes anything in RUN_DIR."""
    run_dir = tmp_path / "run"
    ledger = run_dir / "state" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"format": 1, trunc\n')
    proc = _role(
        "fed_server", {}, "--scenario", str(scenario_file), "--run-dir", str(run_dir),
        "--bind", "127.0.0.1:0", "--control-bind", "127.0.0.1:0",
    )  # fmt: skip
    _refused(proc, f"{ledger}: not JSON (Expecting property name")
    assert "another fedsllm version" not in proc.stderr
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == [
        "state",
        "state/ledger.json",
    ]
