"""The SQL the docs show runs as printed, against a real database holding what the consumer
can store, including messages that are not UTF-8."""

from __future__ import annotations

import psycopg2
import pytest

from tests import docs


def docs_queries() -> dict[str, str]:
    """{comment: statement} of every ```sql block of the docs."""
    queries: dict[str, str] = {}
    for document in docs.doc_files():
        queries.update(docs.sql_queries(document.read_text()))
    return queries


@pytest.fixture
def dsn(migrated_dsn) -> str:
    return migrated_dsn


# (raw value as the consumer stored it, what the docs' query shows for it)
DEAD_LETTERS = [
    (b'{"symbol":"BTCUSDT","price":"1"', '{"symbol":"BTCUSDT","price":"1"'),
    (b"\xff\xfe not utf-8", "\\377\\376 not utf-8"),
    ("prix: 10 €".encode(), "prix: 10 \\342\\202\\254"),
    ("cut mid-€".encode()[:-1], "cut mid-\\342\\202"),  # raw_value is cut at 16 KiB
    (b"back\\slash", "back\\\\slash"),
    (None, None),  # a tombstone
]


def test_the_dead_letter_query_shows_every_message_even_bytes_that_are_not_utf8(dsn) -> None:
    query = next(sql for comment, sql in docs_queries().items() if "rejected" in comment)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for offset, (raw, _) in enumerate(DEAD_LETTERS):
            cur.execute(
                "INSERT INTO dead_letter_events "
                '(topic, partition, "offset", raw_key, raw_value, raw_size, error, received_at) '
                "VALUES ('btc_price', 0, %(offset)s, NULL, %(raw)s, %(size)s, 'invalid JSON', "
                "now())",
                {"offset": offset, "raw": raw, "size": len(raw or b"")},
            )
        conn.commit()
        cur.execute(query)
        rows = cur.fetchall()
    conn.close()
    shown = {offset: raw for _, offset, _, raw in rows}
    assert shown == {offset: text for offset, (_, text) in enumerate(DEAD_LETTERS)}


def test_every_query_of_the_docs_runs_on_the_schema(dsn) -> None:
    queries = docs_queries()
    assert len(queries) >= 6, queries
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for statement in queries.values():
            cur.execute(statement)
            if cur.description is not None:
                cur.fetchall()
    conn.close()


def test_forgetting_the_offsets_of_vanished_partitions_leaves_the_others(dsn) -> None:
    """The troubleshooting's statement for a recreated topic with fewer partitions deletes
    the offsets of the partitions it no longer has, and nothing else."""
    (statement,) = [sql for comment, sql in docs_queries().items() if "no longer has" in comment]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for topic, partition in [
            ("btc_price", 0),
            ("btc_price", 3),
            ("btc_price", 4),
            ("other", 5),
        ]:
            cur.execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
                "VALUES ('btc-aggregator', %(topic)s, %(partition)s, 124)",
                {"topic": topic, "partition": partition},
            )
        cur.execute(statement)
        cur.execute("SELECT topic, partition FROM consumer_offsets ORDER BY 1, 2")
        assert cur.fetchall() == [("btc_price", 0), ("other", 5)]
    conn.close()


@pytest.mark.parametrize(
    ("stored", "after", "recorded"),
    [
        (40, 43, True),  # the consumer stopped at the batch: moved past it, and recorded
        (38, 38, False),  # not at the batch (its last flush failed): nothing changes
        (None, 43, True),  # nothing stored for the partition yet: it starts past the batch
    ],
)
def test_skipping_an_undecodable_batch_moves_that_partition_only_from_the_batch(
    dsn, stored, after, recorded
) -> None:
    """The troubleshooting's statement for an undecodable record batch (partition 1, offsets
    40 to 42) moves that partition's stored offset past the batch only if it stands at the
    batch, and records the skip among the dead letters; other partitions stay."""
    (statement,) = [sql for comment, sql in docs_queries().items() if "undecodable" in comment]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        rows = [(0, 40)] + ([(1, stored)] if stored is not None else [])
        for partition, offset in rows:
            cur.execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
                "VALUES ('btc-aggregator', 'btc_price', %s, %s)",
                (partition, offset),
            )
        cur.execute(statement)
        cur.execute("SELECT partition, next_offset FROM consumer_offsets ORDER BY 1")
        assert cur.fetchall() == [(0, 40), (1, after)]
        cur.execute('SELECT topic, partition, "offset", error FROM dead_letter_events')
        skipped = [
            ("btc_price", 1, 40, "skipped by hand: undecodable record batch, offsets 40 to 42")
        ]
        assert cur.fetchall() == (skipped if recorded else [])
    conn.close()
