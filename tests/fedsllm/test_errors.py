"""The typed errors' messages."""

from __future__ import annotations

from fedsllm.errors import NO_VALUE, ConfigError


def test_a_given_value_is_shown_after_the_reason() -> None:
    assert str(ConfigError("data.seq_len", 0, "must be > 0")) == "data.seq_len: must be > 0, got 0"


def test_a_given_null_is_still_shown() -> None:
    # None here is what the user wrote (a null in the scenario), worth showing.
    assert str(ConfigError("model.preset", None, "must be a string")).endswith(", got None")


def test_no_value_ends_the_message_with_the_reason() -> None:
    err = ConfigError("--param", NO_VALUE, "required unless --paper")
    assert str(err) == "--param: required unless --paper"
    assert err.value is NO_VALUE
