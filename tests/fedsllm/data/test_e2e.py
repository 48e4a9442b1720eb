"""E2E generator: seeded, well-formed, and a function of attributes + template."""

from __future__ import annotations

import collections

import pytest

from fedsllm.data.e2e import (
    ATTRIBUTE_ORDER,
    NUM_TEMPLATES,
    SEPARATOR,
    VALUES,
    generate_e2e,
    render_sentence,
    render_text,
)


def test_deterministic_by_seed_and_prefix_stable() -> None:
    a = generate_e2e(100, 7)
    assert a == generate_e2e(100, 7)
    assert [r.text for r in a] != [r.text for r in generate_e2e(100, 8)]
    assert generate_e2e(30, 7) == a[:30]


def test_records_are_well_formed() -> None:
    for record in generate_e2e(300, 0):
        keys = list(record.attributes)
        assert keys[:3] == ["name", "eatType", "food"]
        assert keys == [k for k in ATTRIBUTE_ORDER if k in record.attributes]
        for key, value in record.attributes.items():
            assert value in VALUES[key]
            assert f"{key}[{value}]" in record.mr
        assert record.text == record.mr + SEPARATOR + record.sentence
        assert record.text.isascii()
        assert record.attributes["name"] in record.sentence
        assert record.sentence.endswith(".")


def test_text_is_a_function_of_attributes_and_template() -> None:
    seen: dict[tuple, str] = {}
    records = generate_e2e(3000, 1)
    for record in records:
        key = (tuple(record.attributes.items()), record.template)
        assert seen.setdefault(key, record.text) == record.text
        assert render_text(record.attributes, record.template) == record.text
    # Every template is used, and they really differ for the same attributes.
    assert set(collections.Counter(r.template for r in records)) == set(range(NUM_TEMPLATES))
    attrs = records[0].attributes
    assert len({render_sentence(attrs, t) for t in range(NUM_TEMPLATES)}) == NUM_TEMPLATES


def test_every_attribute_value_is_stated() -> None:
    """A learnable mapping: the sentence mentions every attribute's value."""
    for record in generate_e2e(500, 2):
        sentence = record.sentence
        a = record.attributes
        for key in ("name", "eatType", "food", "priceRange", "customerRating", "area", "near"):
            if key in a:
                assert a[key] in sentence, (key, record.text)
        if "familyFriendly" in a:
            assert ("family-friendly" in sentence.lower()) or ("adults-only" in sentence)


def test_bad_template_rejected() -> None:
    with pytest.raises(ValueError):
        render_sentence({"name": "Aromi", "eatType": "pub"}, NUM_TEMPLATES)
