"""The in-order delivery bookkeeping of one kafka-python client: what it was handed and has
not acknowledged yet, in send order, and what to send again once it is retired."""

from __future__ import annotations

import threading
from collections import deque

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.future import Future

from btcpipe.contract import PriceEvent


class NotTaken(Exception):
    """The client refused events[index] (its KafkaError is the cause)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Outstanding:
    """One client's sent and not yet acknowledged events, in send order, with their futures.

    kafka-python completes a partition's records in the order they were sent, so the events
    acknowledged so far are almost always a prefix of the queue. The sending thread reads the
    acknowledgements from the futures themselves (`collect` pops the acknowledged prefix): no
    callback per record, no lock on the hot path. An event acknowledged behind a slower
    partition's waits for it, and is counted as outstanding meanwhile (`unacknowledged` says
    exactly). A failure is heard at once, through an errback on the client's network thread:
    it and everything behind it that is not acknowledged are what `retire` returns, to be
    sent again."""

    def __init__(self) -> None:
        self.queue: deque[tuple[PriceEvent, Future]] = deque()
        self._lock = threading.Lock()  # failure and retired, set from two threads
        self.failure: Exception | None = None  # the first failed delivery: retire the client
        self.retired = False  # late errbacks of a retired client change nothing

    def send_each(self, producer: KafkaProducer, topic: str, events: list[PriceEvent]) -> None:
        """Hand the events to the client in order, remembering each (the hot path: per event
        one deque append and an errback without arguments). Raises NotTaken (from the
        client's KafkaError) with the index of the first event not handed over."""
        send, remember, on_failed = producer.send, self.queue.append, self.fail
        index = 0
        try:
            for index, event in enumerate(events):  # noqa: B007 (index is kept on failure)
                future = send(
                    topic,
                    key=event.key(),
                    value=event.to_json_bytes(),
                    timestamp_ms=event.event_time,
                )
                remember((event, future))
                future.add_errback(on_failed)
        except KafkaError as exc:
            raise NotTaken(index) from exc

    def collect(self) -> list[PriceEvent]:
        """Pop and return the acknowledged prefix, in send order (the sending thread's)."""
        queue, acked = self.queue, []
        while queue and queue[0][1].succeeded():
            acked.append(queue.popleft()[0])
        return acked

    def unacknowledged(self) -> int:
        """Sent and not acknowledged, exactly: the whole queue is looked at (after a flush
        the acknowledged prefix is all of it, so `collect` first keeps this short)."""
        return sum(1 for _, future in self.queue if not future.succeeded())

    def fail(self, exc: Exception) -> None:
        """Note the client's first failure (later ones add nothing); the sink's next publish
        retires this client. An errback of kafka-python's network thread, or the sink's own
        verdict on a stalled client."""
        with self._lock:
            if not self.retired and self.failure is None:
                self.failure = exc

    def stop_listening(self) -> None:
        """The client is closed: its late errbacks change nothing."""
        with self._lock:
            self.retired = True

    def retire(self) -> list[PriceEvent]:
        """Stop listening to this client; its unacknowledged events, in send order."""
        self.stop_listening()
        sent, self.queue = self.queue, deque()
        return [event for event, future in sent if not future.succeeded()]
