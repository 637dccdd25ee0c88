"""Small wording helpers for messages people read."""

from __future__ import annotations

_IRREGULAR = {"was": "were", "is": "are", "has": "have"}


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``, ``"0 images"``: the count with its noun agreeing."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or _IRREGULAR.get(word) or word + 's'}"
