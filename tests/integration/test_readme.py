"""The README's SQL runs as printed, against a real database holding what the consumer can
store, including messages that are not UTF-8."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_queries() -> dict[str, str]:
    """{comment: statement} of the ```sql blocks in the README."""
    queries = {}
    for block in re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL):
        for comment, statement in re.findall(r"-- ([^\n]*)\n(.*?;)", block, re.DOTALL):
            queries[comment] = statement
    return queries


@pytest.fixture
def dsn(migrated_dsn) -> str:
    return migrated_dsn


# (raw value as the consumer stored it, what the README's query shows for it)
DEAD_LETTERS = [
    (b'{"symbol":"BTCUSDT","price":"1"', '{"symbol":"BTCUSDT","price":"1"'),
    (b"\xff\xfe not utf-8", "\\377\\376 not utf-8"),
    ("prix: 10 €".encode(), "prix: 10 \\342\\202\\254"),
    ("cut mid-€".encode()[:-1], "cut mid-\\342\\202"),  # raw_value is cut at 16 KiB
    (b"back\\slash", "back\\\\slash"),
    (None, None),  # a tombstone
]


def test_the_dead_letter_query_shows_every_message_even_bytes_that_are_not_utf8(dsn) -> None:
    query = next(sql for comment, sql in readme_queries().items() if "rejected" in comment)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for offset, (raw, _) in enumerate(DEAD_LETTERS):
            cur.execute(
                "INSERT INTO dead_letter_events "
                '(topic, partition, "offset", raw_key, raw_value, raw_size, error, received_at) '
                "VALUES ('btc_price', 0, %s, NULL, %s, %s, 'invalid JSON', now())",
                (offset, raw, len(raw or b"")),
            )
        conn.commit()
        cur.execute(query)
        rows = cur.fetchall()
    conn.close()
    shown = {offset: raw for _, offset, _, raw in rows}
    assert shown == {offset: text for offset, (_, text) in enumerate(DEAD_LETTERS)}


def test_every_readme_query_runs_on_the_schema(dsn) -> None:
    queries = readme_queries()
    assert len(queries) >= 4, queries
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for statement in queries.values():
            cur.execute(statement)
            cur.fetchall()
    conn.close()


def test_the_layout_names_every_folder_and_helper_of_tests_and_only_those() -> None:
    """The README's layout entry of tests/ stays true: each folder and helper module it names
    exists, none exists unnamed, and no test file imports another (what tests share lives in
    the helpers)."""
    (block,) = re.findall(r"## Layout\n\n```\n(.*?)```", README.read_text(), re.DOTALL)
    (entry,) = [e for e in re.split(r"\n(?=\S)", block) if e.startswith("tests/")]
    # Its items: the first after the folder's name, each next one after the ")" closing the
    # description of the one before.
    items = re.findall(r"(?:^tests/ |\), )([\w*]+(?:\.py|\.sh|/))", " ".join(entry.split()))
    named = set(items)
    tests = README.parent / "tests"
    assert {"unit/", "integration/"} <= named and all((tests / name).exists() for name in named)
    present = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in tests.iterdir()
        if not path.name.startswith(("test_", "__", "."))
        and (path.is_dir() or path.suffix == ".py")
        and path.name not in ("conftest.py", "requirements.txt")
    } | {path.name for path in tests.glob("*.sh")}
    assert present <= named, f"not in README's layout: {sorted(present - named)}"
    importing = [
        path.name
        for path in tests.glob("*/test_*.py")
        if re.search(r"^\s*(from|import) tests\.test_", path.read_text(), re.MULTILINE)
    ]
    assert importing == [], f"test files importing test files: {importing}"
