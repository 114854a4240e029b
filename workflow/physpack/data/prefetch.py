"""Items of an iterator produced ahead in a background thread.

A thread pays only when the consumer has work of its own to overlap with: handing
an item from one thread to the other costs lock handoffs and, under the GIL, about
a quarter of the loader's assembly time per batch (cProfile and wall time on the
QM9-like set of ``benchmarks/bench_loader.py``). :func:`prefetched` with
``adaptive`` therefore measures, item by item, the time spent producing and the
time the consumer keeps each item, and starts the thread only once the consumer's
time reaches :data:`OVERLAP` of the production time.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _Failure:
    """An exception raised in the prefetch thread, handed to the consumer."""

    def __init__(self, exc: Exception):
        self.exc = exc


_END = object()
#: items timed in the caller's thread before ``adaptive`` decides on a thread
PROBE = 8
#: consumer time per item, as a fraction of the production time, from which the
#: thread's overlap outweighs its handoffs
OVERLAP = 0.5


def prefetched(
    produced: Iterator[T], depth: int, adaptive: bool = False
) -> Iterator[T]:
    """The items of ``produced``, computed up to ``depth`` items ahead in a daemon
    thread named ``physpack-prefetch`` (``depth`` 0: in the caller's thread).

    With ``adaptive``, items are produced in the caller's thread for as long as the
    consumer keeps each one for less than :data:`OVERLAP` of the time it took to
    produce (measured over windows of :data:`PROBE` items): a thread could not
    overlap anything then. Once it does, the rest comes from the thread.

    An exception in the thread is raised in the consumer at the item where it
    happened; closing the returned generator (or dropping it) stops the thread.
    """
    if depth == 0:
        yield from produced
        return
    produced = iter(produced)
    if adaptive and not (yield from _until_overlap(produced)):
        return
    yield from _threaded(produced, depth)


def _until_overlap(produced: Iterator[T]) -> Iterator[T]:
    """Items of ``produced`` in the caller's thread until, over a window of
    :data:`PROBE` items, the consumer's median time per item reaches
    :data:`OVERLAP` of the median production time (medians: a busy machine's
    preemptions hit single items); returns whether items remain (the generator's
    return value)."""
    make: list[float] = []
    keep: list[float] = []
    while True:
        t0 = time.perf_counter()
        try:
            item = next(produced)
        except StopIteration:
            return False
        t1 = time.perf_counter()
        yield item
        make.append(t1 - t0)
        keep.append(time.perf_counter() - t1)
        if len(make) == PROBE:
            if statistics.median(keep) >= OVERLAP * statistics.median(make):
                return True
            make.clear()
            keep.clear()


def _threaded(produced: Iterator[T], depth: int) -> Iterator[T]:
    """The items of ``produced``, up to ``depth`` ahead in the prefetch thread."""
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
