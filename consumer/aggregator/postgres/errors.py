"""What a call to PostgreSQL may raise besides succeeding, each saying what the caller can do.

StoreUnavailable is transient (retry later), StoreMisconfigured permanent (a person must fix a
setting), StoreFailed the database refusing the work (stop and show the cause). NotOwner and
OffsetsMoved are the answers of the tables themselves: another group owns them, or another
consumer stored offsets for our partitions."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached, does not answer, or failed mid-transaction; nothing was
    written. Transient: retry later."""


class StoreMisconfigured(Exception):
    """A setting is wrong (password, database, user, host name): retrying cannot help."""


class StoreFailed(Exception):
    """PostgreSQL refused the work itself (a bug, a schema out of step): stop, show why."""


class NotOwner(Exception):
    """The tables belong to another consumer group; the message says how to take over."""

    def __init__(self, owner: str, group: str, running: bool = False) -> None:
        if running:
            text = (
                f"consumer group {group!r} no longer fills the tables: group {owner!r} took "
                f"them over (consumer.py --group {group} --take-over takes them back)."
            )
        else:
            text = (
                f"the tables are filled by consumer group {owner!r}, not {group!r}: to hand "
                f"them over (with their stored offsets, so nothing is counted twice), stop "
                f"group {owner!r} and run consumer.py --group {group} --take-over."
            )
        super().__init__(text)
        self.owner = owner


class OffsetsMoved(Exception):
    """Another consumer stored offsets for our partitions since we read them: we are a
    zombie of an older generation, and our pending state must be dropped, not written."""
