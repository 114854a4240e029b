"""Iteration state of the loader: process slots of a step, and resume states.

A loader's position in its stream is ``(epoch, position)`` (batches of the epoch
already handed out); with the seed, that is everything the order depends on. A
saved state also records what must match on restore (:func:`check_state`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

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
