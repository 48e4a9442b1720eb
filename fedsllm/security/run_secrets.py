"""The launcher's credentials for one run: a token per peer, and with TLS a CA
and a certificate per role, each role given only its own.

`prepare_run_secrets(run_dir, scenario, ...)` writes, all mode 0600 in 0700
directories:

    RUN_DIR/launcher/                    launcher-private: every token
        tokens.json                      (identity -> token) and, with TLS,
        certs/                           what `fedsllm certs` writes
    RUN_DIR/roles/<role>/secrets/        one role's own files only:
        token                            its bearer token
        peers.json                       servers only: the tokens they accept
        ca.pem, <stem>.pem, <stem>.key   with TLS: the CA and its own pair
    RUN_DIR/watcher/                     the read-only observer's (fedsllm watch,
        token                            a dashboard): its token, which only the
        ca.pem, watcher.pem, watcher.key fed server accepts, and with TLS its pair

and `role_env(name)` gives the variables that point the role's process at
them (fedsllm.wire.rpc.security_from_env reads them): FEDSLLM_TOKEN_FILE,
FEDSLLM_PEER_TOKENS, FEDSLLM_TLS_CA/CERT/KEY, FEDSLLM_INSECURE. No secret is
ever on a command line or in the scenario (which RunInfo serves to every
peer). The launcher itself calls with its own token / certificate
(`launcher_security`); `fedsllm watch` and other observers call as the
`watcher` identity (`read_watcher_security`), which servers let follow the
telemetry and read status only (fedsllm.security.identity.READ_ONLY_METHODS).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedsllm.security.identity import Identity, TokenTable

log = logging.getLogger(__name__)

SERVER_ROLES = ("fed_server", "main_server")
WATCHER_DIR = "watcher"
"""RUN_DIR/watcher/: the watcher identity's credentials, apart from the
launcher's (which can act for every role): give an observer this directory only."""
WATCHER = Identity("watcher")
SECURITY_ENV_VARS = (
    "FEDSLLM_TOKEN",
    "FEDSLLM_TOKEN_FILE",
    "FEDSLLM_PEER_TOKENS",
    "FEDSLLM_TLS_CA",
    "FEDSLLM_TLS_CERT",
    "FEDSLLM_TLS_KEY",
    "FEDSLLM_INSECURE",
)
"""What a role's credentials come from; a role gets only the launcher's values,
never the launching shell's."""


def identity_of_role(name: str) -> Identity:
    """The identity of a launcher role name: "fed_server", "main_server", "client_3"."""
    if name.startswith("client_"):
        return Identity.client(int(name.removeprefix("client_")))
    return Identity(name)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_private(path: Path, data: str | bytes) -> None:
    """Owner-only from the start, and again after the write: a file that was
    already there (a run directory prepared twice) keeps no wider mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)


@dataclass
class RunSecrets:
    tokens: TokenTable
    tls_dir: Path | None
    """The launcher-private certificate directory, None without TLS."""
    insecure: bool
    role_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.tls_dir is not None

    def role_env(self, name: str) -> dict[str, str]:
        """The security variables of role `name` (its files only)."""
        secrets = self.role_dirs[name]
        env = {"FEDSLLM_TOKEN_FILE": str(secrets / "token")}
        if name in SERVER_ROLES:
            env["FEDSLLM_PEER_TOKENS"] = str(secrets / "peers.json")
        if self.tls_dir is not None:
            stem = identity_of_role(name).file_stem
            env["FEDSLLM_TLS_CA"] = str(secrets / "ca.pem")
            env["FEDSLLM_TLS_CERT"] = str(secrets / f"{stem}.pem")
            env["FEDSLLM_TLS_KEY"] = str(secrets / f"{stem}.key")
        if self.insecure:
            env["FEDSLLM_INSECURE"] = "1"
        return env

    def launcher_env(self) -> dict[str, str]:
        """The launcher's own credentials as variables, for the health probes it
        runs inside namespaces (python -m fedsllm.wire.probe)."""
        launcher = self.tls_dir.parent if self.tls_dir is not None else None
        env = {"FEDSLLM_TOKEN": self.tokens.token_for(Identity("launcher"))}
        if launcher is not None and self.tls_dir is not None:
            env["FEDSLLM_TLS_CA"] = str(self.tls_dir / "ca.pem")
            env["FEDSLLM_TLS_CERT"] = str(self.tls_dir / "launcher.pem")
            env["FEDSLLM_TLS_KEY"] = str(self.tls_dir / "launcher.key")
        if self.insecure:
            env["FEDSLLM_INSECURE"] = "1"
        return env

    def launcher_security(self) -> object:
        """fedsllm.wire.rpc.Security of the launcher process itself."""
        from fedsllm.security.credentials import load_tls, tls_config_for
        from fedsllm.wire.rpc import Security

        tls = None
        if self.tls_dir is not None:
            tls = load_tls(tls_config_for(self.tls_dir, Identity("launcher")))
        return Security(
            tls=tls, token=self.tokens.token_for(Identity("launcher")), insecure=self.insecure
        )

    def describe(self) -> str:
        """For the log and the run's report."""
        if self.tls:
            return "TLS: on (mutual TLS, per-role certificates from a per-run CA)"
        if self.insecure:
            return "TLS: off, insecure (--insecure: plain gRPC, per-peer tokens)"
        return "TLS: off (plain gRPC on loopback, per-peer tokens)"


def write_compose_secrets(directory: Path, num_clients: int) -> None:
    """Per-service tokens for `fedsllm compose` without --tls, in `directory`
    (secrets/ next to the compose file; fedsllm.deploy.compose.token_service
    mounts each file into its service only):

        <stem>.token         one service's own token (stem: fed_server,
                             main_server, client_<k>)
        <stem>.peers.json    servers only: the tokens they accept
        watcher.token        no service's: for an observer of the run (fedsllm
                             watch, a dashboard) on the compose network

    The fed server accepts the clients, the main server, itself (its
    supervisor asks it whether the run is finished) and the watcher; the main
    server accepts the clients. New tokens on every call. The directory is
    0700 (no other host user reads it); the files are 0644 inside it because
    the containers run as another uid (the image's fedsllm user), each
    mounting only its own."""
    names = ["fed_server", "main_server"] + [f"client_{k}" for k in range(num_clients)]
    names.append(WATCHER.role)
    tokens = TokenTable.generate([identity_of_role(n) for n in names])
    callers = {
        "fed_server": {"client", "main_server", "fed_server", WATCHER.role},
        "main_server": {"client"},
    }
    _private_dir(directory)
    for name in names:
        identity = identity_of_role(name)
        files = {f"{identity.file_stem}.token": tokens.token_for(identity)}
        if name in callers:
            peers = {
                who: token
                for who, token in tokens.to_identity_map().items()
                if who.split("/")[0] in callers[name]
            }
            files[f"{identity.file_stem}.peers.json"] = json.dumps(peers, indent=2)
        for file, text in files.items():
            _write_private(directory / file, text)
            (directory / file).chmod(0o644)


def read_launcher_security(run_dir: Path) -> object | None:
    """The launcher's token as a fedsllm.wire.rpc.Security, read back from
    RUN_DIR/launcher/tokens.json, for the progress display's telemetry watcher
    (built before the run's credentials exist; it calls the fed server's local
    unix socket, where TLS is never used); None until they are written."""
    from fedsllm.wire.rpc import Security

    launcher_dir = run_dir / "launcher"
    try:
        tokens = TokenTable.from_identity_map(
            json.loads((launcher_dir / "tokens.json").read_text())
        )
        token = tokens.token_for(Identity("launcher"))
    except (OSError, ValueError, KeyError):
        return None  # not written yet (or being written)
    return Security(token=token)


def read_watcher_security(run_dir: Path) -> object | None:
    """The watcher identity's credentials from RUN_DIR/watcher/ as a
    fedsllm.wire.rpc.Security (its token, and its certificate when the run has
    TLS: used on TCP only, never on the run's unix socket); None when the run
    has none (started by hand, or before watchers existed)."""
    from fedsllm.wire.rpc import Security

    directory = run_dir / WATCHER_DIR
    try:
        token = (directory / "token").read_text().strip()
    except OSError:
        return None
    tls = None
    files = [directory / f for f in _tls_files(WATCHER)]
    if files[1].is_file():
        from fedsllm.security.credentials import load_tls, tls_config_for

        tls = load_tls(tls_config_for(directory, WATCHER))
    # Messages name the files themselves (no flag or variable gave them).
    return Security(
        tls=tls,
        token=token or None,
        token_source=(str(directory / "token"), ""),
        tls_sources=tuple((str(f), "") for f in files) if tls is not None else (),
    )


def existing_run_secrets(
    run_dir: Path, role_dirs: dict[str, Path], insecure: bool
) -> RunSecrets | None:
    """The credentials an interrupted run already has (RUN_DIR/launcher/tokens.json,
    its certs/ and every role's secrets/), so a resumed run keeps them: None when any
    is missing, and then the caller writes a fresh set."""
    launcher = run_dir / "launcher"
    try:
        tokens = TokenTable.from_identity_map(json.loads((launcher / "tokens.json").read_text()))
    except (OSError, ValueError):
        return None
    tls_dir = launcher / "certs"
    secrets = RunSecrets(
        tokens=tokens, tls_dir=tls_dir if tls_dir.is_dir() else None, insecure=insecure
    )
    for name, work_dir in role_dirs.items():
        secret_dir = work_dir / "secrets"
        if not (secret_dir / "token").is_file():
            return None
        if name in SERVER_ROLES and not (secret_dir / "peers.json").is_file():
            return None
        secrets.role_dirs[name] = secret_dir
    log.info("resume: reusing the run's credentials in %s", launcher)
    return secrets


def prepare_run_secrets(
    run_dir: Path,
    role_names: Sequence[str],
    role_dirs: dict[str, Path],
    *,
    num_clients: int,
    tls: bool,
    insecure: bool,
    extra_ip_addresses: Sequence[str] = (),
) -> RunSecrets:
    """Generate and place every role's credentials (see the module docstring).
    `role_dirs` maps each role name to its private directory."""
    launcher_dir = _private_dir(run_dir / "launcher")
    identities = [identity_of_role(n) for n in role_names] + [Identity("launcher"), WATCHER]
    tokens = TokenTable.generate(identities)
    _write_private(launcher_dir / "tokens.json", json.dumps(tokens.to_identity_map(), indent=2))
    tls_dir = None
    if tls:
        from fedsllm.security.certs import write_certs

        tls_dir = launcher_dir / "certs"
        write_certs(tls_dir, num_clients, extra_ip_addresses=extra_ip_addresses)
    secrets = RunSecrets(tokens=tokens, tls_dir=tls_dir, insecure=insecure)
    for name in role_names:
        identity = identity_of_role(name)
        secret_dir = _private_dir(role_dirs[name] / "secrets")
        secrets.role_dirs[name] = secret_dir
        _write_private(secret_dir / "token", tokens.token_for(identity))
        if name in SERVER_ROLES:
            # Who may call this server: clients, the launcher, the other server
            # where it calls this one (the main server calls the fed server),
            # and the read-only watcher where the telemetry is (the fed server).
            fed_only = {"main_server", WATCHER.role} if name == "fed_server" else set()
            callers = {"client", "launcher"} | fed_only
            peers = {
                who: token
                for who, token in tokens.to_identity_map().items()
                if who.split("/")[0] in callers
            }
            _write_private(secret_dir / "peers.json", json.dumps(peers))
        if tls_dir is not None:
            _place_tls(tls_dir, identity, secret_dir)
    _write_watcher(run_dir, tokens, tls_dir)
    return secrets


def _write_watcher(run_dir: Path, tokens: TokenTable, tls_dir: Path | None) -> None:
    """RUN_DIR/watcher/ (0700): the watcher's token and, with TLS, the CA and its
    own certificate and key, each 0600."""
    directory = _private_dir(run_dir / WATCHER_DIR)
    _write_private(directory / "token", tokens.token_for(WATCHER))
    if tls_dir is not None:
        _place_tls(tls_dir, WATCHER, directory)


def _tls_files(identity: Identity) -> tuple[str, str, str]:
    """The CA and `identity`'s certificate and key, as certs.write_certs names them."""
    from fedsllm.security.certs import CA_FILE

    return (CA_FILE, f"{identity.file_stem}.pem", f"{identity.file_stem}.key")


def _place_tls(tls_dir: Path, identity: Identity, directory: Path) -> None:
    """Copy `identity`'s TLS files from the run's certificates into `directory`, 0600."""
    for file in _tls_files(identity):
        _write_private(directory / file, (tls_dir / file).read_bytes())
