"""The engine events, written to `--event-log <target>` as the CLI writes them, as they happen.

`tcp://host:port` (what the Automation API passes to a CLI newer than v3.205.0): the Automation
API listens there as a gRPC server of the `pulumirpc.Events` service; the CLI connects as its
client and makes one client-streaming call, `StreamEvents(stream EventRequest) returns
(google.protobuf.Empty)`, one EventRequest per event whose `event` field is the event's JSON,
and closes the stream at the end; the call returns once the server has handled every event,
so they are all delivered before the CLI exits. Any other target is a file, truncated, then one
JSON event per line (older CLIs, and the CLI run by hand). Traced to pulumi/pulumi
`pkg/backend/display/display.go` (startEventLogger, stampEvents): each event carries `sequence`
and `timestamp` (apitype.EngineEvent), and the log ends with the cancel event.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

_END = object()


class EventLog:
    """A context manager: `send(event)` while open; leaving it delivers what is left."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.sequence = 0
        self.sent: list[dict[str, Any]] = []  # what the display reads back (diagnostics)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.sequence += 1
            stamped = {"sequence": self.sequence, "timestamp": int(time.time()), **event}
            self.sent.append(stamped)
        if self.target is not None:
            self._queue.put(stamped)

    def __enter__(self) -> EventLog:
        if self.target is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="event-log")
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._queue.put(_END)
            self._thread.join(60)

    def _pending(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    def _run(self) -> None:
        assert self.target is not None
        try:
            if self.target.startswith("tcp://"):
                self._stream(self.target.removeprefix("tcp://"))
            else:
                with open(self.target, "w") as log:
                    for event in self._pending():
                        log.write(json.dumps(event) + "\n")
                        log.flush()
        except BaseException as exc:  # the reader is gone: events are lost, the update goes on
            self._error = exc
            for _ in self._pending():
                pass

    def _stream(self, address: str) -> None:
        import grpc
        from pulumi.runtime.proto import events_pb2, events_pb2_grpc

        with grpc.insecure_channel(address) as channel:
            stub = events_pb2_grpc.EventsStub(channel)
            requests = (events_pb2.EventRequest(event=json.dumps(e)) for e in self._pending())
            stub.StreamEvents(requests)
