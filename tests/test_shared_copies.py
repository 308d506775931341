"""producer/pricefeed/shared/ and consumer/aggregator/shared/ are one text in two packages
(the scripts ship in separate images and cannot import each other): edit one, copy it over the
other. This fails while they differ, so a rule cannot change on one side only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCER = ROOT / "producer" / "pricefeed" / "shared"
CONSUMER = ROOT / "consumer" / "aggregator" / "shared"


def sources(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.py"))}


def test_both_copies_hold_the_same_files_byte_for_byte() -> None:
    producer, consumer = sources(PRODUCER), sources(CONSUMER)
    assert {"__init__.py", "contract.py"} <= set(producer)
    assert set(producer) == set(consumer)
    differing = [name for name in producer if producer[name] != consumer[name]]
    assert not differing, f"differ: {differing}; copy producer/pricefeed/shared/ over the other"


def test_the_shared_code_imports_neither_package() -> None:
    """Only relative imports inside shared/: the same text must work in either package."""
    for name, text in sources(PRODUCER).items():
        assert not re.search(rb"^\s*(from|import) (pricefeed|aggregator)\b", text, re.M), name
