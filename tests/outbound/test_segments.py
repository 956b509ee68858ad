"""SMS segment counting: encodings, carrier limits, and boundaries that must not split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outreach.outbound.segments import SegmentInfo, count_segments

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà"
)
GSM_EXTENSION = "€[]{}^~\\|\f"


def _is_gsm(text: str) -> bool:
    try:
        text.encode("gsm03.38")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentInfo("GSM-7", 0, 1)),
        ("a" * 160, SegmentInfo("GSM-7", 160, 1)),
        ("a" * 161, SegmentInfo("GSM-7", 161, 2)),
        ("a" * 306, SegmentInfo("GSM-7", 306, 2)),
        ("a" * 307, SegmentInfo("GSM-7", 307, 3)),
        ("ж" * 70, SegmentInfo("UCS-2", 70, 1)),
        ("ж" * 71, SegmentInfo("UCS-2", 71, 2)),
        ("ж" * 134, SegmentInfo("UCS-2", 134, 2)),
        ("ж" * 135, SegmentInfo("UCS-2", 135, 3)),
    ],
)
def test_known_vectors(text: str, expected: SegmentInfo) -> None:
    assert count_segments(text) == expected


def test_every_gsm_character_is_gsm7_and_extension_characters_cost_two_septets() -> None:
    assert count_segments(GSM_BASIC) == SegmentInfo("GSM-7", len(GSM_BASIC), 1)
    for char in GSM_EXTENSION:
        assert count_segments(char) == SegmentInfo("GSM-7", 2, 1), repr(char)


def test_euro_pushes_a_full_message_over_one_segment() -> None:
    assert count_segments("a" * 158 + "€").segments == 1  # 160 septets
    assert count_segments("a" * 159 + "€") == SegmentInfo("GSM-7", 161, 2)


def test_escape_sequence_at_a_part_boundary_moves_to_the_next_part() -> None:
    # 152 septets then €: the escape would be septet 153 and the € septet 154 -> both move on.
    # Part 1 holds 152, part 2 holds € (2) + 151 a's = 153, part 3 holds the last a.
    assert count_segments("a" * 152 + "€" + "a" * 151) == SegmentInfo("GSM-7", 305, 2)
    # 306 septets is two parts by arithmetic (2 x 153), but the moved escape makes it three.
    assert count_segments("a" * 152 + "€" + "a" * 152) == SegmentInfo("GSM-7", 306, 3)
    assert count_segments("a" * 153 + "€" + "a" * 151) == SegmentInfo("GSM-7", 306, 2)


def test_one_non_gsm_character_makes_the_whole_text_ucs2() -> None:
    assert count_segments("a" * 100) == SegmentInfo("GSM-7", 100, 1)
    assert count_segments("a" * 99 + "ç") == SegmentInfo("UCS-2", 100, 2)
    assert count_segments("10:00\u202fAM").encoding == "UCS-2"  # CLDR's narrow no-break space


def test_emoji_are_two_units_and_never_split() -> None:
    assert count_segments("🙂") == SegmentInfo("UCS-2", 2, 1)
    assert count_segments("a" * 68 + "🙂") == SegmentInfo("UCS-2", 70, 1)
    assert count_segments("a" * 69 + "🙂") == SegmentInfo("UCS-2", 71, 2)
    # 66 units then an emoji: the pair would straddle units 67/68, so it starts part 2.
    assert count_segments("a" * 66 + "🙂" + "a" * 65) == SegmentInfo("UCS-2", 133, 2)
    assert count_segments("a" * 66 + "🙂" + "a" * 66) == SegmentInfo("UCS-2", 134, 3)


def test_describe_names_the_unit() -> None:
    assert count_segments("a" * 412).describe() == "GSM-7, 412 septets"
    assert count_segments("ж").describe() == "UCS-2, 1 UTF-16 units"


_text = st.text(
    alphabet=st.one_of(st.sampled_from(GSM_BASIC + GSM_EXTENSION), st.characters()),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(text=_text, more=st.text(max_size=5))
def test_segments_never_decrease_when_appending(text: str, more: str) -> None:
    before, after = count_segments(text), count_segments(text + more)
    if before.encoding == after.encoding:
        assert after.segments >= before.segments
        assert after.units >= before.units
    else:  # appending can only switch GSM-7 -> UCS-2, which costs more per character
        assert (before.encoding, after.encoding) == ("GSM-7", "UCS-2")
        assert after.segments >= before.segments


@settings(max_examples=200, deadline=None)
@given(text=_text)
def test_gsm7_iff_the_codec_encodes_it(text: str) -> None:
    info = count_segments(text)
    assert (info.encoding == "GSM-7") == _is_gsm(text)
    if info.encoding == "GSM-7":
        assert info.units == len(text.encode("gsm03.38"))
    else:
        assert info.units == len(text.encode("utf-16-le", "surrogatepass")) // 2
    single = 160 if info.encoding == "GSM-7" else 70
    assert (info.segments == 1) == (info.units <= single)
