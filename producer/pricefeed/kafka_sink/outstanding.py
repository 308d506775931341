"""The in-order delivery bookkeeping of one kafka-python client: what it was handed and has
not acknowledged yet, in send order, and what to send again once it is retired."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

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
    acknowledged so far are almost always a prefix of the queue: each acknowledgement pops the
    acknowledged prefix (an event acknowledged behind a slower partition's waits for it, and is
    counted as acknowledged meanwhile). A failed event stops the popping: it and everything
    behind it that is not acknowledged are what `retire` returns, to be sent again.

    Acknowledgements arrive on the client's network thread: the state is kept under `lock`
    (the sink's), under which `heard(now)` is told of each one (True: Kafka had stalled, and
    is answering again); `acknowledged(events, recovered)` gets each popped prefix, outside
    the lock."""

    def __init__(
        self,
        lock: threading.Lock,
        heard: Callable[[float], bool],
        acknowledged: Callable[[list[PriceEvent], bool], None],
    ) -> None:
        self.lock = lock
        self.heard = heard
        self.acknowledged = acknowledged
        self.queue: deque[tuple[PriceEvent, Future]] = deque()
        self.acked_in_queue = 0  # acknowledged but still queued behind an earlier event
        self.failure: Exception | None = None  # the first failed delivery: retire the client
        self.retired = False  # late callbacks of a retired client change nothing

    def count(self) -> int:
        """Sent and not acknowledged."""
        return len(self.queue) - self.acked_in_queue

    def send_each(self, producer: KafkaProducer, topic: str, events: list[PriceEvent]) -> None:
        """Hand the events to the client in order, remembering each (the hot path of a replay:
        per event one deque append and two callbacks without arguments). Raises NotTaken
        (from the client's KafkaError) with the index of the first event not handed over."""
        send, remember = producer.send, self.queue.append
        on_delivered, on_failed = self.on_delivered, self.on_failed
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
                future.add_callback(on_delivered)
                future.add_errback(on_failed)
        except KafkaError as exc:
            raise NotTaken(index) from exc

    def on_delivered(self, _metadata: object) -> None:
        """A callback of kafka-python's network thread (or of `add_callback` in the sending
        thread, for a record acknowledged before it was registered): one per record."""
        queue, acked = self.queue, []
        with self.lock:
            if self.retired:
                return
            self.acked_in_queue += 1
            while queue:
                future = queue[0][1]
                if not (future.is_done and future.exception is None):
                    break
                acked.append(queue.popleft()[0])
            self.acked_in_queue -= len(acked)
            recovered = self.heard(time.monotonic())
        if acked:
            self.acknowledged(acked, recovered)

    def on_failed(self, exc: Exception) -> None:
        """The event stays unacknowledged; the sink's next publish retires this client."""
        self.fail(exc)

    def fail(self, exc: Exception) -> None:
        """Note the client's first failure (later ones add nothing)."""
        with self.lock:
            if not self.retired and self.failure is None:
                self.failure = exc

    def retire(self) -> list[PriceEvent]:
        """Stop listening to this client; its unacknowledged events, in send order."""
        with self.lock:
            self.retired = True
            sent, self.queue = self.queue, deque()
            self.acked_in_queue = 0
        return [
            event for event, future in sent if not (future.is_done and future.exception is None)
        ]
