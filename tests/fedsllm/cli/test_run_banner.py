"""What `fedsllm run` says about its rounds before they start."""

from __future__ import annotations

import pytest

from fedsllm.cli.run import plan_text
from fedsllm.config import load_scenario
from fedsllm.words import counted


@pytest.mark.parametrize(
    ("rounds", "steps", "text"),
    [
        (1, 1, "1 round x 1 local step"),
        (37, 1, "37 rounds x 1 local step"),
        (3, 10, "3 rounds x 10 local steps"),
    ],
)
def test_fixed_steps_banner_counts_in_words(rounds: int, steps: int, text: str) -> None:
    scenario = load_scenario(
        None,
        [
            "policy.name='fixed_steps'",
            f"training.num_rounds={rounds}",
            f"training.num_local_steps={steps}",
        ],
    )
    assert plan_text(scenario) == text


def test_counted_says_one_in_the_singular_and_else_the_plural() -> None:
    assert [counted(n, "round") for n in (0, 1, 2)] == ["0 rounds", "1 round", "2 rounds"]
