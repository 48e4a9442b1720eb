"""generic_texts: seeded, varied, and sharing words with the E2E task."""

from __future__ import annotations

from fedsllm.data.e2e import NAMES, NEAR, generate_e2e
from fedsllm.data.generic import generic_texts


def test_deterministic_by_seed() -> None:
    assert generic_texts(50, 3) == generic_texts(50, 3)
    assert generic_texts(50, 3) != generic_texts(50, 4)
    assert generic_texts(20, 3) == generic_texts(50, 3)[:20]


def test_shape_of_text() -> None:
    texts = generic_texts(300, 0)
    assert len(texts) == 300
    assert len(set(texts)) > 290
    assert all(t and t.isascii() for t in texts)
    joined = " ".join(texts)
    for mark in (".", ",", "[", "]"):
        assert mark in joined
    assert any(ch.isdigit() for ch in joined)


def _words(texts: list[str]) -> set[str]:
    return set(" ".join(texts).lower().replace(".", " ").replace(",", " ").split())


def test_shares_vocabulary_with_e2e_but_not_the_task() -> None:
    """Most non-name words of the E2E sentences occur in the generic text,
    so pretraining on it prepares the base for the task."""
    generic_words = _words(generic_texts(500, 0))
    proper = _words(list(NAMES + NEAR))
    e2e_words = _words([r.sentence for r in generate_e2e(200, 0)]) - proper
    shared = generic_words & e2e_words
    assert len(shared) >= 0.8 * len(e2e_words)
    assert not any("=>" in t or "eatType[" in t for t in generic_texts(500, 0))
