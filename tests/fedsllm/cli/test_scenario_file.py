"""A --scenario that cannot be read as a TOML file is one line naming the flag
and the path, exit code 2, whatever command reads it and whatever is wrong
with the file; nothing is started or written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsllm.cli import main


def _directory(tmp_path: Path) -> Path:
    return tmp_path


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[training]\n# r\xe9sum\xe9\nnum_rounds = 2\n")
    return path


def _not_toml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text("[training\nnum_rounds = 2\n")
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "absent.toml"


def _unreadable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path = tmp_path / "secret.toml"
    path.write_text("[training]\nnum_rounds = 2\n")
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_directory, "is a directory, not a TOML file"),
        (_not_utf8, "not valid TOML (not UTF-8 text"),
        (_not_toml, "not valid TOML ("),
        (_missing, "file not found"),
        (_unreadable, "cannot be read (Permission denied)"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["plan"],
        ["sweep"],
        ["compare", "--policies", "optimal,equal"],
        ["calibrate", "--target-loss", "2.0", "--write", "calibrated.toml"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unreadable_scenario_exits_2_naming_the_flag_and_the_path(
    make, reason: str, command: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    path = make(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([*command, "--scenario", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "--scenario" in err and reason in err and str(path) in err
    assert list(work.iterdir()) == []  # nothing started, nothing written


def test_a_scenario_the_os_refuses_to_read_is_named_with_the_reason(monkeypatch) -> None:
    """What a file without read permission gives a user who is not root (the
    case above skips as root), through the loader every command uses."""
    from fedsllm import config
    from fedsllm.errors import ConfigError

    def refuse(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(config, "open", refuse, raising=False)
    with pytest.raises(ConfigError, match=r"--scenario.*cannot be read \(Permission denied\)"):
        config.load_dict("/etc/fedsllm/scenario.toml")
