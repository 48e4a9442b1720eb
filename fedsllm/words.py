"""How counts read in what people see: the console, the banner, the model card."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """ "1 local step", "37 rounds": a count and its noun, singular for one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
