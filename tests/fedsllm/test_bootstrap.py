"""Every address, port and file of a role: flag, then FEDSLLM_* variable, then the
scenario; a bad value is refused naming where it came from (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsllm.bootstrap import (
    SettingError,
    parse_address,
    parse_bind,
    parse_client_id,
    parse_dir,
    resolve,
)
from fedsllm.config import default_scenario_path
from fedsllm.launch import ROLE_ENV_VARS, role_env

ROOT = Path(__file__).resolve().parents[2]


def test_flag_then_environment_then_scenario_then_default() -> None:
    env = {"FEDSLLM_MAIN_ADDRESS": "env-host:2"}

    def main(flag, env, scenario):
        return resolve(
            "--main-address", flag, "FEDSLLM_MAIN_ADDRESS", "run.main_address", scenario,
            default="dflt:4", parse=parse_address, env=env,
        )  # fmt: skip

    assert main("flag-host:1", env, "scn-host:3") == ("flag-host:1", "--main-address")
    assert main(None, env, "scn-host:3") == ("env-host:2", "FEDSLLM_MAIN_ADDRESS")
    assert main(None, {}, "scn-host:3") == ("scn-host:3", "run.main_address")
    assert main(None, {"FEDSLLM_MAIN_ADDRESS": ""}, "") == ("dflt:4", "default")


@pytest.mark.parametrize(
    ("var", "value", "parse", "reason"),
    [
        ("FEDSLLM_FED_ADDRESS", "no-port", parse_address, "must be host:port"),
        ("FEDSLLM_FED_ADDRESS", "host:http", parse_address, "port 'http' is not a number"),
        ("FEDSLLM_MAIN_ADDRESS", "host:0", parse_address, "port 0 is not in [1, 65535]"),
        ("FEDSLLM_MAIN_BIND", "0.0.0.0:70000", parse_bind, "port 70000 is not in [0, 65535]"),
        ("FEDSLLM_CLIENT_ID", "two", parse_client_id, "must be an integer"),
        ("FEDSLLM_CLIENT_ID", "-1", parse_client_id, "must be >= 0"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_variable(var, value, parse, reason) -> None:
    with pytest.raises(SettingError) as err:
        resolve("--flag", None, var, parse=parse, env={var: value})
    assert str(err.value) == f"{var}: {reason}, got {value!r}"


def test_a_flag_shadows_a_bad_variable() -> None:
    env = {"FEDSLLM_CLIENT_ID": "two"}
    assert resolve("--client-id", "1", "FEDSLLM_CLIENT_ID", parse=parse_client_id, env=env) == (
        1,
        "--client-id",
    )


def test_work_dir_must_be_writable(tmp_path) -> None:
    assert parse_dir(str(tmp_path / "a" / "b")) == (tmp_path / "a" / "b").resolve()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create it"):
        parse_dir(str(blocker / "sub"))


def test_the_launcher_passes_flags_and_drops_role_variables(monkeypatch) -> None:
    from fedsllm.config import load_scenario

    for var in ROLE_ENV_VARS:
        monkeypatch.setenv(var, "set-by-the-user")
    env = role_env(load_scenario(default_scenario_path()))
    assert not set(ROLE_ENV_VARS) & set(env)


def _role(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEDSLLM_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**base, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "env", "message"),
    [
        (
            "client",
            {"FEDSLLM_CLIENT_ID": "two"},
            "FEDSLLM_CLIENT_ID: must be an integer, got 'two'",
        ),
        (
            "client",
            {"FEDSLLM_CLIENT_ID": "0", "FEDSLLM_FED_ADDRESS": "fed-host"},
            "FEDSLLM_FED_ADDRESS: must be host:port, got 'fed-host'",
        ),
        (
            "main_server",
            {"FEDSLLM_FED_ADDRESS": "fed:1"},
            "--work-dir: required (or FEDSLLM_WORK_DIR)",
        ),
        (
            "fed_server",
            {"FEDSLLM_SCENARIO": "/nonexistent/scenario.toml"},
            "FEDSLLM_SCENARIO: no such file, got '/nonexistent/scenario.toml'",
        ),
    ],
)
def test_roles_exit_2_naming_the_bad_variable(module, env, message, tmp_path) -> None:
    proc = _role(module, env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "got None" not in proc.stderr  # a missing setting has no value to show
    assert "Traceback" not in proc.stderr


def test_fed_server_bind_from_the_environment_is_checked(tmp_path) -> None:
    proc = _role(
        "fed_server",
        {"FEDSLLM_FED_BIND": "0.0.0.0:99999"},
        "--scenario",
        str(default_scenario_path()),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "FEDSLLM_FED_BIND: port 99999 is not in [0, 65535], got '0.0.0.0:99999'" in proc.stderr
