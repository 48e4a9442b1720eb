"""The built-in corpus: E2E-style restaurant data-to-text samples.

Each record is a meaning representation (MR) of restaurant attributes and one
sentence about them, rendered as ``"name[The Eagle], eatType[coffee shop],
food[French] => The Eagle is a coffee shop serving French food."``. The
attributes and the template id are drawn from a seeded generator; the
sentence is a pure function of (attributes, template id), so the task is
learnable by a small model and the same record always reads the same. Only
strings are made here; tokenizing and partitioning are left to
`fedsllm.data.dataset` and `fedsllm.data.partition`. Text is ASCII
(prices in pounds are spelled out), so byte tokens equal characters.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

ATTRIBUTE_ORDER = (
    "name",
    "eatType",
    "food",
    "priceRange",
    "customerRating",
    "area",
    "familyFriendly",
    "near",
)
"""MR order; the first `NUM_REQUIRED` are always present, the rest optional."""

NUM_REQUIRED = 3
"""name, eatType and food are always present (food is the class the non-IID
partition skews, so every record needs one)."""

NAMES = (
    "The Eagle",
    "The Mill",
    "Alimentum",
    "Aromi",
    "Bibimbap House",
    "Blue Spice",
    "Browns Cambridge",
    "Clowns",
    "Cocum",
    "Cotto",
    "Fitzbillies",
    "Giraffe",
    "Green Man",
    "Loch Fyne",
    "Midsummer House",
    "Strada",
    "Taste of Cambridge",
    "The Cricketers",
    "The Golden Curry",
    "The Phoenix",
    "The Plough",
    "The Punter",
    "The Vaults",
    "Zizzi",
)
NEAR = (
    "Burger King",
    "Cafe Adriatic",
    "Cafe Brazil",
    "Cafe Rouge",
    "Crowne Plaza Hotel",
    "Express by Holiday Inn",
    "Raja Indian Cuisine",
    "Rainbow Vegetarian Cafe",
    "The Bakers",
    "The Portland Arms",
    "The Sorrento",
    "Yippee Noodle Bar",
    "All Bar One",
    "Avalon",
    "Ranch",
    "The Rice Boat",
)
EAT_TYPES = ("coffee shop", "pub", "restaurant")
FOODS = ("English", "French", "Italian", "Chinese", "Indian", "Japanese", "Fast food")
PRICE_RANGES = (
    "cheap",
    "moderate",
    "high",
    "less than 20 pounds",
    "20-25 pounds",
    "more than 30 pounds",
)
CUSTOMER_RATINGS = ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5")
AREAS = ("city centre", "riverside")
FAMILY_FRIENDLY = ("yes", "no")

VALUES: Mapping[str, tuple[str, ...]] = {
    "name": NAMES,
    "eatType": EAT_TYPES,
    "food": FOODS,
    "priceRange": PRICE_RANGES,
    "customerRating": CUSTOMER_RATINGS,
    "area": AREAS,
    "familyFriendly": FAMILY_FRIENDLY,
    "near": NEAR,
}
"""Every attribute's fixed value list."""

OPTIONAL_PROBABILITY = 0.5
"""Chance that each optional attribute appears (about 5.5 attributes a record,
close to the real E2E data)."""

NUM_TEMPLATES = 4
"""Sentence templates; record.template indexes them."""

SEPARATOR = " => "
"""Between the MR and the sentence (shared with `fedsllm.data.files`)."""


@dataclass(frozen=True, slots=True)
class E2ERecord:
    """One sample: its attributes (in MR order), template id and full text."""

    attributes: dict[str, str]
    template: int
    text: str

    @property
    def mr(self) -> str:
        """The meaning representation, the part a model is prompted with."""
        return render_mr(self.attributes)

    @property
    def sentence(self) -> str:
        """The reference sentence, the part a model should produce."""
        return render_sentence(self.attributes, self.template)


def render_mr(attributes: Mapping[str, str]) -> str:
    """``name[X], eatType[Y], ...`` in the fixed attribute order."""
    return ", ".join(f"{key}[{attributes[key]}]" for key in ATTRIBUTE_ORDER if key in attributes)


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _price(value: str) -> str:
    if value in ("cheap", "moderate", "high"):
        return f"in the {value} price range"
    return f"with prices {value}" if value.startswith(("less", "more")) else f"costing {value}"


def _rating(value: str) -> str:
    if "out of" in value:
        return f"with a customer rating of {value}"
    return f"with {_article(value)} {value} customer rating"


def _location(attrs: Mapping[str, str]) -> str:
    parts = []
    if "area" in attrs:
        parts.append(f"in the {attrs['area']}")
    if "near" in attrs:
        parts.append(f"near {attrs['near']}")
    return " ".join(parts)


def _family(attrs: Mapping[str, str], subject: str) -> str:
    if "familyFriendly" not in attrs:
        return ""
    verb = "is" if attrs["familyFriendly"] == "yes" else "is not"
    return f"{subject} {verb} family-friendly."


def _details(attrs: Mapping[str, str]) -> list[str]:
    """Price and rating phrases, in a fixed order."""
    out = []
    if "priceRange" in attrs:
        out.append(_price(attrs["priceRange"]))
    if "customerRating" in attrs:
        out.append(_rating(attrs["customerRating"]))
    return out


def _join(sentences: list[str]) -> str:
    return " ".join(s for s in sentences if s)


def render_sentence(attributes: Mapping[str, str], template: int) -> str:
    """The reference sentence for `attributes` under `template` (0..3).

    Deterministic: the same attributes and template always give the same
    string, so a model can learn the mapping exactly.
    """
    if not 0 <= template < NUM_TEMPLATES:
        raise ValueError(f"template must be in [0, {NUM_TEMPLATES}), got {template}")
    a = attributes
    name, eat = a["name"], a["eatType"]
    food = a.get("food")
    location = _location(a)
    details = _details(a)
    if template == 0:
        first = f"{name} is {_article(eat)} {eat}"
        if food:
            first += f" serving {food} food"
        if details:
            first += " " + " and ".join(details)
        first += "."
        second = f"It is located {location}." if location else ""
        return _join([first, second, _family(a, "It")])
    if template == 1:
        head = f"{location[0].upper()}{location[1:]}, there is" if location else "There is"
        kind = f"{food} {eat}" if food else eat
        first = f"{head} {_article(kind)} {kind} called {name}"
        if details:
            first += ", " + " and ".join(details)
        return _join([first + ".", _family(a, name)])
    if template == 2:
        kind = f"{food} {eat}" if food else eat
        first = f"{name} is {_article(kind)} {kind}"
        if location:
            first += f" {location}"
        first += "."
        # "It is with a high customer rating" reads badly; name the place.
        second = f"{name} offers food {' and '.join(details)}." if details else ""
        return _join([first, second, _family(a, "It")])
    # template 3: family first, then everything else in one sentence
    fam = a.get("familyFriendly")
    lead = {"yes": "A family-friendly", "no": "An adults-only"}.get(fam or "", "")
    kind = f"{food} {eat}" if food else eat
    first = f"{lead} {kind}" if lead else f"{_article(kind).capitalize()} {kind}"
    first += f", {name},"
    if location:
        first += f" is {location}"
        if details:
            first += " " + " and ".join(details)
    elif details:
        first += " is a place " + " and ".join(details)
    else:
        first += " is open"
    return first + "."


def render_text(attributes: Mapping[str, str], template: int) -> str:
    """The full training text: MR, separator, sentence."""
    return render_mr(attributes) + SEPARATOR + render_sentence(attributes, template)


def _draw_attributes(rng: random.Random) -> dict[str, str]:
    attributes = {key: rng.choice(VALUES[key]) for key in ATTRIBUTE_ORDER[:NUM_REQUIRED]}
    for key in ATTRIBUTE_ORDER[NUM_REQUIRED:]:
        # Draw the value even when absent so one attribute's presence never
        # shifts another's value stream.
        value = rng.choice(VALUES[key])
        if rng.random() < OPTIONAL_PROBABILITY:
            attributes[key] = value
    return {key: attributes[key] for key in ATTRIBUTE_ORDER if key in attributes}


def generate_e2e(num_records: int, seed: int) -> list[E2ERecord]:
    """`num_records` records, identical for the same seed on every machine.

    The first n records of a longer run equal an n-record run, so train and
    validation can be cut from one stream.
    """
    rng = random.Random(seed)
    records = []
    for _ in range(num_records):
        attributes = _draw_attributes(rng)
        template = rng.randrange(NUM_TEMPLATES)
        records.append(E2ERecord(attributes, template, render_text(attributes, template)))
    return records
