"""Row validation's fast paths read every input exactly as the general rules do."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.errors import InvalidRow
from node.records import _items, _plain_purchase, _purchase, _purchases

# Pieces of purchase items near the edges of each rule: calendar-invalid and malformed
# dates, categories with case, spaces and symbols, amounts with too many digits or
# decimals, signs, exponents and padding.
_DAYS = st.sampled_from(
    [
        "2024-02-29",
        "2023-02-29",
        "2025-13-01",
        "2025-06-01",
        "20250601",
        " 2025-06-01",
        "٢٠٢٥-06-01",
    ]
)
_CATEGORIES = st.text(alphabet="aZ0 _&/-é:", max_size=6) | st.just("x" * 64) | st.just("x" * 65)
_AMOUNTS = st.sampled_from(
    ["0", "5", "5.", "12.5", "12.50", "12.505", "0005", "9999999999.99", "10000000000", "-1",
     "1e3", " 7 ", "NaN", "", "1.2.3", "١٢"]
)  # fmt: skip


def outcome(read: Any, *args: Any) -> Any:
    try:
        return read(*args)
    except InvalidRow as exc:
        return ("refused", str(exc))


@settings(max_examples=1500)
@given(day=_DAYS, category=_CATEGORIES, amount=_AMOUNTS)
@example(day="2025-06-01", category="sailing ", amount="1")
@example(day="2025-06-01", category="Sailing", amount="1")
def test_a_plainly_written_purchase_reads_as_the_general_rules_read_it(
    day: str, category: str, amount: str
) -> None:
    item = f"{day}:{category}:{amount}"
    pieces = [p.split(":") for p in _items(item, "purchases")]
    if any(len(p) != 3 for p in pieces):  # a colon in a piece: the shape rule comes first
        general = ("refused", "each purchase must read date:category:amount")
    else:
        general = outcome(lambda: tuple(_purchase(*p) for p in pieces))
    assert outcome(_purchases, item) == general


def test_the_plain_reading_is_taken_for_the_common_spelling() -> None:
    from node.records import _PLAIN_PURCHASE

    match = _PLAIN_PURCHASE.match("2025-06-01:sailing:1200.5")
    assert match is not None
    assert _plain_purchase(match) == _purchase("2025-06-01", "sailing", "1200.5")
    for odd in ("2025-06-01:Sailing:1", "2025-06-01: sailing:1", "2025-06-01:sailing:1.234"):
        assert _PLAIN_PURCHASE.match(odd) is None


@given(cell=st.text(alphabet="a ;\t", max_size=8))
def test_a_list_cell_splits_the_same_with_or_without_separators(cell: str) -> None:
    assert _items(cell, "interests") == [p.strip() for p in cell.split(";") if p.strip()]
