"""A blocking iterator read on the event loop: the bridge from a thread that produces events
(a model's streamed answer) to a page that shows each one the moment it arrives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

_END = object()


class EventStream:
    """A blocking iterator of events (a model's answer) run in a thread and read on the loop
    as the events come, so the page shows each piece the moment it arrives.

    `stop()` ends the reading at once; the thread closes the iterator on its next event and
    calls `on_stopped(events seen)` if the answer had not ended yet.
    """

    def __init__(
        self,
        events: Iterator[dict[str, Any]],
        on_stopped: Callable[[list[dict[str, Any]]], None] | None = None,
    ):
        self._events = events
        self._on_stopped = on_stopped
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stopped = threading.Event()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, daemon=True, name="event-stream").start()

    def _put(self, item: Any) -> None:
        # A RuntimeError: the loop is gone, the server is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _pump(self) -> None:
        seen: list[dict[str, Any]] = []
        try:
            for event in self._events:
                seen.append(event)
                if self._stopped.is_set():
                    if self._on_stopped is not None and not ("done" in event or "error" in event):
                        self._on_stopped(seen)
                    break
                self._put(event)
        except Exception as exc:  # a failure the service did not turn into an event
            log.exception("event stream failed")
            self._put({"error": type(exc).__name__, "detail": str(exc) or type(exc).__name__})
        finally:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
            self._put(_END)

    def stop(self) -> None:
        self._stopped.set()
        self._queue.put_nowait(_END)

    async def __aiter__(self):
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item
