"""Identity parsing, TokenTable and require(), without gRPC."""

from __future__ import annotations

import pytest

from fedsllm.security.identity import (
    AuthenticationError,
    Identity,
    PermissionDeniedError,
    TokenTable,
    identity_from_auth_context,
    parse_identity,
    require,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fedsllm://client/0", Identity.client(0)),
        ("fedsllm://client/12", Identity.client(12)),
        ("client/3", Identity.client(3)),
        ("fedsllm://main_server", Identity("main_server")),
        ("fed_server", Identity("fed_server")),
        ("fedsllm://controller", Identity("controller")),
        ("launcher", Identity("launcher")),
    ],
)
def test_parse_identity(text: str, expected: Identity) -> None:
    identity = parse_identity(text)
    assert identity == expected
    assert parse_identity(identity.uri) == identity
    assert parse_identity(str(identity)) == identity


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fedsllm://",
        "fedsllm://client",
        "fedsllm://client/",
        "fedsllm://client/-1",
        "fedsllm://client/01",
        "fedsllm://client/1/x",
        "fedsllm://client/1 ",
        "fedsllm://client/9999999999",
        "fedsllm://root",
        "https://client/1",
        "spiffe://fedsllm/client/1",
        "fedsllm://main_server/0",
    ],
)
def test_malformed_identity_is_an_authentication_error(text: str) -> None:
    with pytest.raises(AuthenticationError):
        parse_identity(text)


@pytest.mark.parametrize(
    "role, client_id",
    [("client", None), ("client", -1), ("client", True), ("main_server", 0), ("admin", None)],
)
def test_identity_rejects_bad_fields(role: str, client_id: int | None) -> None:
    with pytest.raises(ValueError):
        Identity(role, client_id)


def test_names() -> None:
    c = Identity.client(3)
    assert (c.uri, c.file_stem, c.service_name) == ("fedsllm://client/3", "client_3", "client-3")
    m = Identity("main_server")
    assert (m.uri, m.file_stem, m.service_name) == (
        "fedsllm://main_server",
        "main_server",
        "main-server",
    )


def test_token_table_lookup_and_round_trip() -> None:
    table = TokenTable.generate([Identity.client(0), Identity.client(1), Identity("main_server")])
    assert len(table) == 3
    token = table.token_for(Identity.client(1))
    assert len(token) >= 32
    assert table.lookup(token) == Identity.client(1)
    assert table.lookup(token[:-1]) is None
    assert table.lookup(token + "x") is None
    assert table.lookup("") is None
    assert table.lookup("\udcff" * 20) is None  # not ASCII: no match, no crash
    again = TokenTable.from_identity_map(table.to_identity_map())
    assert again.lookup(token) == Identity.client(1)
    assert set(table.to_identity_map()) == {"client/0", "client/1", "main_server"}


@pytest.mark.parametrize(
    "tokens",
    [
        {"short": Identity.client(0)},
        {"has a space in it 123": Identity.client(0)},
        {"x" * 20: Identity.client(0), "y" * 20: Identity.client(0)},
    ],
)
def test_token_table_refuses_weak_or_ambiguous_tokens(tokens: dict[str, Identity]) -> None:
    with pytest.raises(ValueError):
        TokenTable(tokens)


def test_require() -> None:
    c1 = Identity.client(1)
    assert require(c1, role="client", client_id=1) is c1
    assert require(c1, role=("client", "launcher")) is c1
    with pytest.raises(PermissionDeniedError, match="client/1 may not push as client 2"):
        require(c1, role="client", client_id=2, action="push")
    with pytest.raises(PermissionDeniedError, match="only main_server may"):
        require(c1, role="main_server")
    with pytest.raises(PermissionDeniedError):
        require(Identity("main_server"), role="client", client_id=0)
    with pytest.raises(ValueError):
        require(c1, role="admin")


def test_identity_from_auth_context() -> None:
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context({"transport_security_type": [b"insecure"]}) is None
    ssl = {"transport_security_type": [b"ssl"]}
    got = identity_from_auth_context({**ssl, "peer_uri": [b"https://x", b"fedsllm://client/4"]})
    assert got == Identity.client(4)
    with pytest.raises(AuthenticationError, match="no certificate"):
        identity_from_auth_context(ssl)
    with pytest.raises(AuthenticationError, match="more than one"):
        identity_from_auth_context(
            {**ssl, "peer_uri": [b"fedsllm://client/1", b"fedsllm://client/2"]}
        )
