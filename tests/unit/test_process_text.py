"""btcpipe.process's one-line texts of exceptions, as every log line and exit sentence uses them."""

from __future__ import annotations

from btcpipe.process import describe, one_line

# libpq's text for a refused connection, as psycopg2 raises it.
LIBPQ_REFUSED = (
    'connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
)


def test_a_second_line_is_set_off_as_its_own_sentence() -> None:
    assert one_line(OSError(LIBPQ_REFUSED)) == (
        'connection to server at "127.0.0.1", port 1 failed: Connection refused; '
        "Is the server running on that host and accepting TCP/IP connections?"
    )


def test_whitespace_inside_a_line_collapses_and_an_empty_text_gives_the_class() -> None:
    assert one_line(ValueError("a   b\t c")) == "a b c"
    assert one_line(ValueError("")) == "ValueError"
    assert describe(ValueError("first\n\n  second  ")) == "ValueError: first; second"
    assert describe(None) == "no error"
