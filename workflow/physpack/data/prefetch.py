"""Items of an iterator produced ahead in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _Failure:
    """An exception raised in the prefetch thread, handed to the consumer."""

    def __init__(self, exc: Exception):
        self.exc = exc


_END = object()


def prefetched(produced: Iterator[T], depth: int) -> Iterator[T]:
    """The items of ``produced``, computed up to ``depth`` items ahead in a daemon
    thread named ``physpack-prefetch`` (``depth`` 0: in the caller's thread).

    An exception in the thread is raised in the consumer at the item where it
    happened; closing the returned generator (or dropping it) stops the thread.
    """
    if depth == 0:
        yield from produced
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in produced:
                if not put(item):
                    return
            put(_END)
        except Exception as exc:  # noqa: BLE001 (re-raised in the consumer)
            put(_Failure(exc))

    worker = threading.Thread(target=work, name="physpack-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()
