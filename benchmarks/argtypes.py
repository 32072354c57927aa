"""argparse types shared by the benchmark scripts: integers and comma lists of integers with a lower bound."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting an integer >= ``lo`` (ArgumentTypeError otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    parse.__name__ = f"integer >= {lo}"
    return parse


def int_list(lo: int) -> Callable[[str], list[int]]:
    """An argparse ``type`` accepting a non-empty comma list of integers >= ``lo``, e.g. ``32,64``."""
    one = int_at_least(lo)

    def parse(text: str) -> list[int]:
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of integers >= {lo}, e.g. 32,64")
        return [one(v) for v in items]
    parse.__name__ = f"comma list of integers >= {lo}"
    return parse
