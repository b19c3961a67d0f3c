"""Who a background job belongs to: the name of whoever started it, e.g. a workshop participant
in a room sharing one dashboard. A name is a label, not a login; it is shown on shared pages (as
Markdown there) and stored in the job's spec.json, so it is checked before either.

    validate_owner("  Zoë Müller ")     # "Zoë Müller"
    validate_owner("![x](http://e/)")   # InvalidInputError: no markup, links or images
"""
from __future__ import annotations

import unicodedata
from typing import Any

from analysis.errors import InvalidInputError

MAX_OWNER_CHARS = 40
# Besides letters and digits of any script: nothing that is a path separator, markup, a link or an image.
OWNER_PUNCTUATION = " .'-_"


def validate_owner(owner: Any) -> str:
    """A job owner's name, stripped: 1..MAX_OWNER_CHARS letters, digits (of any script) and the
    characters of OWNER_PUNCTUATION, starting with a letter or digit. Raises InvalidInputError
    saying what is wrong."""
    if not isinstance(owner, str):
        raise InvalidInputError(f"a name must be text, got {type(owner).__name__}")
    name = owner.strip()
    if not name:
        raise InvalidInputError("the name is empty; give a short name, e.g. your first name")
    if len(name) > MAX_OWNER_CHARS:
        raise InvalidInputError(f"the name is {len(name)} characters long; keep it to {MAX_OWNER_CHARS}")
    if not all(_is_letter_or_digit(c) or c in OWNER_PUNCTUATION for c in name) or not _is_letter_or_digit(name[0]):
        raise InvalidInputError("a name may hold letters, digits, spaces and . ' - _ only, starting with a letter "
                                "or digit (no '/', '\\', markup or control characters)")
    return name


def _is_letter_or_digit(character: str) -> bool:
    # L: letters, M: the marks that combine with them (accents), N: digits
    return unicodedata.category(character)[0] in "LMN"
