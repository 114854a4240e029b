"""Iteration state of the loader: process slots of a step, and resume states.

A loader's position in its stream is ``(epoch, position)`` (batches of the epoch
already handed out); with the seed, that is everything the order depends on. A
saved state also records what must match on restore (:func:`check_state`).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from physpack.data.assembly import Batch
from physpack.data.prefetch import prefetched
from physpack.errors import ConfigError, InputError

#: keys of every state, checked on restore
ALWAYS = ("shuffle", "bucket_size", "mix_sizes", "n_molecules", "subset_crc32")
#: keys written only when not the default (older states stay valid)
OPTIONAL = ("pairs", "cutoff", "budgets", "batches_per_step")


@dataclasses.dataclass(frozen=True)
class ProcessSlots:
    """This process's share of each optimisation step under data parallelism.

    Step ``s`` takes batches ``s·B … s·B + B − 1`` of the epoch stream (``B =
    batches_per_step``, over all processes) and this process owns the slots
    ``first … first + count − 1`` of it: the layout of
    :func:`physpack.training.parallel.step_batches`.

    Attributes:
        batches_per_step: ``B``.
        first: this process's first slot.
        count: its number of slots (``None``: all ``B``).
    """

    batches_per_step: int
    first: int = 0
    count: int | None = None

    def __post_init__(self) -> None:
        B, count = self.batches_per_step, self.n_slots
        if B < 1 or self.first < 0 or count < 1 or self.first + count > B:
            raise ConfigError(
                f"loader.process_slots: slots {self.first}..{self.first + count - 1}"
                f" outside a step of {B} batch(es)"
            )

    @property
    def n_slots(self) -> int:
        return self.batches_per_step if self.count is None else int(self.count)

    def owns(self, b: int) -> bool:
        """Whether stream batch ``b`` belongs to this process."""
        return self.first <= b % self.batches_per_step < self.first + self.n_slots


def check_state(state: Mapping[str, Any], mine: Mapping[str, Any]) -> tuple[int, int]:
    """``(epoch, position)`` of a saved ``state`` after checking that it belongs
    to a loader configured as ``mine`` (the restoring loader's state).

    Raises:
        InputError: another subset, budget or ordering; a negative epoch/position.
    """
    for key in ALWAYS + OPTIONAL:
        if (key in state or key in OPTIONAL) and state.get(key) != mine.get(key):
            raise InputError(
                f"loader state: {key}={state.get(key)!r} but this loader has "
                f"{mine.get(key)!r} (saved from another subset or configuration)"
            )
    if "budget" in state and list(state["budget"]) != mine["budget"]:
        raise InputError(
            f"loader state: budget {list(state['budget'])} but this loader has "
            f"{mine['budget']}; pass the saved max_atoms/max_pairs/max_molecules"
        )
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or position < 0:
        raise InputError(f"loader state: negative epoch/position {epoch}/{position}")
    return epoch, position


class StreamIteration:
    """The iteration half of :class:`~physpack.data.loader.PackedMemmapLoader`:
    its state (``epoch``, ``position``) and the packed stream, by batch
    (:meth:`packed_batches`) or by optimisation step (:meth:`packed_steps`).

    The loader provides the epoch plans (``_plan``, ``num_batches``), the
    assembly (``assemble``, ``empty_batch``, ``_transfer``) and the options the
    state records.
    """

    # provided by the loader
    epoch: int
    position: int
    seed: int
    shuffle: bool
    bucket_size: int
    mix_sizes: bool
    n_molecules: int
    prefetch: int
    pairs: str
    cutoff: float | None
    process_slots: ProcessSlots | None
    _sizes: np.ndarray
    _indices: np.ndarray | None

    def _normalise(self) -> None:
        if self.position >= self.num_batches():
            self.epoch, self.position = self.epoch + 1, 0

    def _fingerprint(self) -> int:
        crc = zlib.crc32(memoryview(self._sizes))
        if self._indices is not None:
            crc = zlib.crc32(memoryview(self._indices), crc)
        return crc

    def state_dict(self) -> dict[str, Any]:
        """The iteration state: ``epoch``, ``position`` (packed batches of the epoch
        already handed out), ``seed`` (with the epoch, everything the order depends
        on) and what must match on restore (subset checksum, budgets, options).
        Plain ints/bools/lists: JSON-serialisable."""
        self._normalise()
        state: dict[str, Any] = {
            "epoch": int(self.epoch),
            "position": int(self.position),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "bucket_size": self.bucket_size,
            "mix_sizes": self.mix_sizes,
            "n_molecules": int(self.n_molecules),
            "subset_crc32": self._fingerprint(),
            "budget": list(dataclasses.astuple(self.budget)),
        }
        # only where they differ from the defaults: older states stay valid
        if self.pairs != "all":
            state |= {"pairs": self.pairs, "cutoff": self.cutoff}
        if len(self.budgets) > 1:
            state["budgets"] = [list(dataclasses.astuple(b)) for b in self.budgets]
        if self.process_slots is not None and len(self.budgets) > 1:
            state["batches_per_step"] = self.process_slots.batches_per_step
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next packed batches are exactly those
        the saved loader would have produced.

        Raises:
            InputError: the state belongs to another subset, budget or ordering.
        """
        epoch, position = check_state(state, self.state_dict())
        self.seed = int(state.get("seed", self.seed))
        self._plan_cache = None
        self.epoch, self.position = epoch, position
        if position > self.num_batches():
            raise InputError(
                f"loader state: position {position} beyond the "
                f"{self.num_batches()} batches of epoch {epoch}"
            )

    def packed_batches(self, epoch: int | None = None) -> Iterator[Batch | None]:
        """The rest of the current epoch (or of ``epoch``, from its start when it is
        not the current one) as fixed-shape packed batches (module docstring).

        With :attr:`process_slots`, the batches of other processes are ``None``
        (not assembled, not transferred); the stream and its order are the same in
        every process. The position advances as batches are handed out, so
        :meth:`state_dict` taken between batches resumes after the last batch
        received; when the epoch is exhausted the loader moves to the next one.
        """
        if epoch is not None and epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0
        self._normalise()
        current = self.epoch
        plan = self._plan(current)
        start = self.position
        slots = self.process_slots
        transfer = self._transfer()

        def produced() -> Iterator[Any]:
            for b in range(start, len(plan)):
                if slots is not None and not slots.owns(b):
                    yield None
                    continue
                batch = self.assemble(plan.positions(b), plan.kind(b))
                yield batch if transfer is None else transfer(batch)

        ahead = prefetched(produced(), self.prefetch, adaptive=transfer is None)
        try:
            for b, batch in enumerate(ahead, start + 1):
                self.position = b
                yield batch
        finally:
            ahead.close()  # stops the prefetch thread when the consumer stops early
        if self.epoch == current:
            self.epoch, self.position = current + 1, 0

    def __iter__(self) -> Iterator[Batch | None]:
        return self.packed_batches()

    def packed_steps(
        self,
        transfer: Callable[[list[Any]], Any] | None = None,
        epoch: int | None = None,
    ) -> Iterator[Any]:
        """The rest of the epoch as optimisation steps: for each step, this process's
        batches (``process_slots.n_slots`` of them, after :attr:`device_put`), passed
        to ``transfer`` in the prefetch thread (e.g. stack them and place them on
        the local devices with one ``jax.device_put``); without ``transfer``, the
        list itself.

        Every process yields the same number of steps; a short last step is
        completed with :meth:`empty_batch` of the step's budget, so every molecule
        of the subset is in exactly one yielded batch of one process. The position
        advances by whole steps.

        Raises:
            ConfigError: no :attr:`process_slots`.
            InputError: a position inside a step (a state saved mid-step).
        """
        slots = self.process_slots
        if slots is None:
            raise ConfigError("packed_steps: the loader has no process_slots")
        if epoch is not None and epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0
        self._normalise()
        B = slots.batches_per_step
        if self.position % B:
            raise InputError(
                f"loader state: position {self.position} inside a step of {B} batches"
            )
        current = self.epoch
        plan = self._plan(current)
        start = self.position
        per_batch = self._transfer()
        mine = range(slots.first, slots.first + slots.n_slots)

        def produced() -> Iterator[Any]:
            for s in range(start, len(plan), B):
                kind = plan.kind(s)
                group = []
                for j in mine:
                    b = s + j
                    batch = (
                        self.assemble(plan.positions(b), plan.kind(b))
                        if b < len(plan)
                        else self.empty_batch(kind)
                    )
                    group.append(batch if per_batch is None else per_batch(batch))
                yield group if transfer is None else transfer(group)

        ahead = prefetched(
            produced(), self.prefetch, adaptive=transfer is None and per_batch is None
        )
        try:
            for s, step in enumerate(ahead, 1):
                self.position = min(start + s * B, len(plan))
                yield step
        finally:
            ahead.close()
        if self.epoch == current:
            self.epoch, self.position = current + 1, 0
