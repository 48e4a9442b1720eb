"""Generated compose files restart every role on failure, as `fedsllm run --restart
on-failure` does, at most run.max_restarts times (a role that cannot run still
fails `up`); the report runs once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsllm.config import load_scenario
from fedsllm.deploy.compose import build_compose, restart_policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("links", ["token", "tc"])
def test_every_role_restarts_on_failure(links) -> None:
    doc = build_compose(load_scenario(None, ["clients.num_clients=2"]), links=links)
    services = doc["services"]
    roles = {name: s for name, s in services.items() if name != "report"}
    assert set(roles) == {"fed-server", "main-server", "client-0", "client-1"}
    assert {s["restart"] for s in roles.values()} == {"on-failure:3"}
    assert services["report"]["restart"] == "no"


def test_the_limit_follows_run_max_restarts() -> None:
    doc = build_compose(load_scenario(None, ["run.max_restarts=5"]))
    assert doc["services"]["client-0"]["restart"] == "on-failure:5"
    # Docker reads on-failure:0 as no limit: zero restarts is "no".
    assert restart_policy(0) == "no"


def test_the_checked_in_file_restarts_every_role_on_failure() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        assert service["restart"] == ("no" if name == "report" else "on-failure:3"), name
