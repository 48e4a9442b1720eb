"""Generic English-like text for the base pretraining of the tiny preset models.

A random frozen base leaves LoRA little to adapt, so presets are first
pretrained on this text (see `fedsllm.model.build`). It comes from a small
seeded grammar: sentences with subjects, verbs, objects, places, numbers,
lists and ``key[value]`` pairs. Its words overlap the E2E generator's
(food, price, area, family, coffee, river, city centre ...) and it uses the
same punctuation, but it never pairs attributes with a sentence about them,
so the fine-tuning task itself stays new to the model. Only text is made
here; tokenizing is left to `fedsllm.data.dataset`.
"""

from __future__ import annotations

import random

_DETERMINERS = ("the", "a", "one", "every", "that", "this", "some")
_ADJECTIVES = (
    "old",
    "young",
    "small",
    "big",
    "quiet",
    "busy",
    "cheap",
    "expensive",
    "good",
    "bad",
    "high",
    "low",
    "average",
    "friendly",
    "nice",
    "new",
    "warm",
    "cold",
    "fast",
    "slow",
    "red",
    "green",
    "blue",
    "local",
    "famous",
    "popular",
    "simple",
    "fresh",
    "moderate",
    "English",
    "French",
    "Italian",
    "Chinese",
    "Indian",
    "Japanese",
    "family-friendly",
    "adults-only",
    "fast",
)
_NOUNS = (
    "man",
    "woman",
    "child",
    "family",
    "friend",
    "student",
    "teacher",
    "cook",
    "driver",
    "city",
    "river",
    "town",
    "street",
    "house",
    "shop",
    "market",
    "park",
    "school",
    "restaurant",
    "coffee",
    "food",
    "price",
    "area",
    "table",
    "book",
    "car",
    "dog",
    "cat",
    "window",
    "garden",
    "bridge",
    "train",
    "letter",
    "meal",
    "menu",
    "customer",
    "rating",
    "pub",
    "bar",
    "centre",
    "place",
    "room",
    "day",
    "night",
    "week",
    "year",
    "coffee shop",
    "price range",
    "customer rating",
    "hotel",
    "cafe",
    "kitchen",
    "noodle",
    "burger",
)
_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "family": "families",
    "city": "cities",
    "coffee": "coffees",
    "food": "foods",
    "bus": "buses",
    "centre": "centres",
    "church": "churches",
    "coffee shop": "coffee shops",
    "price range": "price ranges",
    "customer rating": "customer ratings",
}
_VERBS = (
    ("sees", "see"),
    ("likes", "like"),
    ("finds", "find"),
    ("opens", "open"),
    ("serves", "serve"),
    ("visits", "visit"),
    ("buys", "buy"),
    ("makes", "make"),
    ("wants", "want"),
    ("needs", "need"),
    ("reads", "read"),
    ("brings", "bring"),
    ("offers", "offer"),
    ("keeps", "keep"),
    ("gives", "give"),
    ("takes", "take"),
)
_INTRANSITIVE = (
    ("walks", "walk"),
    ("waits", "wait"),
    ("sleeps", "sleep"),
    ("works", "work"),
    ("eats", "eat"),
    ("runs", "run"),
    ("sits", "sit"),
    ("talks", "talk"),
)
_PREPOSITIONS = ("in", "near", "by", "at", "on", "behind", "beside", "outside")
_PLACES = (
    "the city centre",
    "the riverside",
    "the park",
    "the market",
    "the old town",
    "the station",
    "the school",
    "the bridge",
    "the river",
    "the garden",
)
_TIMES = ("today", "every day", "at night", "in the morning", "on Sunday", "last week", "often")
_NAMES = ("Anna", "Tom", "Maria", "John", "Lily", "Peter", "Sara", "David", "Emma", "Paul")
_KEYS = ("color", "size", "shape", "city", "day", "item", "kind", "owner", "level")
_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


def _noun_phrase(rng: random.Random) -> tuple[str, bool]:
    """A noun phrase and whether it is plural (for verb agreement)."""
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(_NAMES), False
    adjective = f"{rng.choice(_ADJECTIVES)} " if rng.random() < 0.5 else ""
    noun = rng.choice(_NOUNS)
    if roll < 0.35:
        count = rng.randint(2, 12)
        number = str(count) if rng.random() < 0.5 else _WORDS[count - 1] if count <= 10 else "many"
        return f"{number} {adjective}{_plural(noun)}", True
    return f"{rng.choice(_DETERMINERS)} {adjective}{noun}", False


def _clause(rng: random.Random) -> str:
    subject, plural = _noun_phrase(rng)
    if rng.random() < 0.7:
        verb = rng.choice(_VERBS)[1 if plural else 0]
        obj, _ = _noun_phrase(rng)
        words = [subject, verb, obj]
    else:
        words = [subject, rng.choice(_INTRANSITIVE)[1 if plural else 0]]
    if rng.random() < 0.5:
        words.append(f"{rng.choice(_PREPOSITIONS)} {rng.choice(_PLACES)}")
    if rng.random() < 0.3:
        words.append(rng.choice(_TIMES))
    return " ".join(words)


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        text = _clause(rng)
        if rng.random() < 0.3:
            text += f", {rng.choice(('and', 'but', 'so', 'while'))} {_clause(rng)}"
        end = "?" if rng.random() < 0.08 else "."
        return text[0].upper() + text[1:] + end
    if kind < 0.7:
        subject, plural = _noun_phrase(rng)
        verb = "are" if plural else "is"
        adjectives = rng.sample(_ADJECTIVES, rng.randint(1, 3))
        desc = (
            adjectives[0]
            if len(adjectives) == 1
            else (", ".join(adjectives[:-1]) + " and " + adjectives[-1])
        )
        text = f"{subject} {verb} {desc}"
        return text[0].upper() + text[1:] + "."
    if kind < 0.76:
        noun, _ = _noun_phrase(rng)
        place = f"{rng.choice(_PREPOSITIONS)} {rng.choice(_PLACES)}"
        pattern = rng.randrange(4)
        if pattern == 0:
            text = f"there is {noun} called {rng.choice(_NAMES)} {place}"
        elif pattern == 1:
            text = f"{rng.choice(_NAMES)} is located {place}"
        elif pattern == 2:
            bound = rng.choice(("less than", "more than", "about"))
            food = rng.choice(_ADJECTIVES)
            text = f"{noun} is serving {food} food with prices {bound} {rng.randint(2, 50)} pounds"
        else:
            text = (
                f"{noun} offers {rng.choice(_NOUNS)} with a rating of {rng.randint(1, 5)} out of 5"
            )
        return text[0].upper() + text[1:] + "."
    if kind < 0.85:
        items = rng.sample(_NOUNS, rng.randint(2, 4))
        price = rng.randint(1, 99)
        return (
            f"{rng.choice(_NAMES)} has {', '.join(_plural(n) for n in items[:-1])} and "
            f"{_plural(items[-1])}, and pays {price} pounds."
        )
    keys = rng.sample(_KEYS, rng.randint(2, 4))
    pairs = []
    for key in keys:
        value = rng.choice(_ADJECTIVES if rng.random() < 0.5 else _NOUNS)
        pairs.append(f"{key}[{value}]")
    return ", ".join(pairs)


def generic_texts(num_texts: int, seed: int) -> list[str]:
    """`num_texts` short passages (one to three sentences, about 40-150
    characters), the same for the same seed on every machine."""
    rng = random.Random(seed)
    texts = []
    for _ in range(num_texts):
        num_sentences = rng.randint(1, 3)
        texts.append(" ".join(_sentence(rng) for _ in range(num_sentences)))
    return texts
