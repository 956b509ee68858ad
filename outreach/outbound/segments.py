"""SMS segment counting: how many billable SMS a text becomes, and in which encoding.

Owns the GSM 03.38 / UCS-2 decision and the segment arithmetic carriers apply:

- GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table
  (``€ [ ] { } ^ ~ \\ |`` and form feed cost two septets: an escape plus the character);
  otherwise UCS-2, counted in UTF-16 code units (an emoji outside the BMP costs two).
- One SMS holds 160 septets or 70 UCS-2 units. A longer text is sent as concatenated parts
  whose user-data header leaves 153 septets or 67 units each; an escape sequence or a
  surrogate pair is never split across parts, so parts are filled greedily, character by
  character.
- The empty text is 0 units and 1 segment: sending it would still be one SMS.

Pure and dependency-light: must not import faust, aiokafka, twilio, sendgrid, openai, fastapi
or sqlalchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class SegmentInfo:
    """The encoding of a text, its size in that encoding's units, and its SMS segment count."""

    encoding: Encoding
    units: int
    segments: int

    def describe(self) -> str:
        """``"GSM-7, 412 septets"`` / ``"UCS-2, 80 UTF-16 units"``: for messages to people."""
        unit = "septets" if self.encoding == "GSM-7" else "UTF-16 units"
        return f"{self.encoding}, {self.units} {unit}"


@lru_cache(maxsize=4096)
def _septets(char: str) -> int:
    """Septets ``char`` takes in GSM 03.38 (1, or 2 with an escape); 0 if it is not GSM."""
    try:
        return len(char.encode("gsm03.38"))
    except UnicodeEncodeError:
        return 0


def _utf16_units(char: str) -> int:
    # surrogatepass: a lone surrogate is still one unit on the wire, not a crash here
    return len(char.encode("utf-16-le", "surrogatepass")) // 2


def _parts(sizes: list[int], part_capacity: int) -> int:
    """Greedy fill: a character that does not fit in the current part starts the next one."""
    count, used = 1, 0
    for size in sizes:
        if used + size > part_capacity:
            count += 1
            used = 0
        used += size
    return count


def count_segments(text: str) -> SegmentInfo:
    """How ``text`` is encoded as SMS and how many segments it takes (at least 1)."""
    septets = [_septets(char) for char in text]
    if all(septets):
        encoding: Encoding = "GSM-7"
        sizes, single, part = septets, GSM7_SINGLE, GSM7_PART
    else:
        encoding = "UCS-2"
        sizes, single, part = [_utf16_units(c) for c in text], UCS2_SINGLE, UCS2_PART
    units = sum(sizes)
    segments = 1 if units <= single else _parts(sizes, part)
    return SegmentInfo(encoding=encoding, units=units, segments=segments)
