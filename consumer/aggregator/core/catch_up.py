"""When the consumer has just read to the end of a backlog. Pure, no I/O."""

from __future__ import annotations


class CatchUpWatch:
    """Tells when the consumer has just read to the end of a backlog (a backfill, or what
    piled up during an outage), so that it can flush at once instead of at the next tick:
    the backlog is then visible as soon as it is read. Live traffic is a few messages per
    poll and never makes a backlog, so there the flush keeps its cadence."""

    BACKLOG_MESSAGES = 20_000  # behind by this many: catching up, not live

    def __init__(self) -> None:
        self.behind = False

    def caught_up(self, lag: int, just_read: int) -> bool:
        """True once, when `lag` (messages behind the partition ends) reaches 0 after a
        backlog. `just_read`: the messages of this poll, which the lag before it included (a
        poll may take a whole backlog at once)."""
        if lag + just_read >= self.BACKLOG_MESSAGES:
            self.behind = True
        if lag == 0 and self.behind:
            self.behind = False
            return True
        return False
