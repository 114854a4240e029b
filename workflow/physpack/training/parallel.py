"""Data-parallel training over every local device and across processes (SLURM tasks).

The layout is plain data parallelism on a one-axis :class:`jax.sharding.Mesh`
(axis :data:`DATA_AXIS`) over ``D`` devices, ``D = Σ_p d_p`` for processes ``p``
with ``d_p`` selected devices each:

* the loader yields one deterministic stream of fixed-shape packed batches per
  epoch (identical in every process: same seed, same split);
* every optimisation step takes ``D`` consecutive batches of that stream, device
  ``g`` (process-major order) gets batch ``g`` of the group, so each process
  trains on its own slice and every molecule is still used exactly once per epoch
  (:func:`step_batches`; a short last group is filled with empty batches). Each
  process walks the whole stream; with a loader that yields ``None`` for the
  batches of other processes it would read only its own;
  optionally each device sums ``k`` batches (``batches_per_device``), which makes
  ``k`` devices and 1 device × ``k`` batches the same computation;
* the ``D`` batches are stacked along a new leading axis, sharded with
  ``NamedSharding(mesh, P("data"))``; parameters and optimiser state are
  replicated (``P()``);
* the loss is normalised by the GLOBAL number of molecules/atoms of the step
  (:func:`data_parallel_value_and_grad`): the step is the single-device step on the
  concatenated batch, not the mean of per-device means.

Why global normalisation: packed batches hold a variable number of molecules and
atoms (fixed budgets, not fixed counts). The mean of per-device means weights a
molecule in a sparse batch more than one in a dense batch, so it would depend on
how molecules fell into batches, and results would change with the device count.
Summing the per-device loss sums and counts first (one ``psum`` each) and dividing
once gives exactly the loss of the concatenated batch, whatever the split.

Multi-process (several SLURM tasks, ``srun``):
:func:`physpack.training.cluster.initialize_distributed` starts ``jax.distributed``
from the SLURM environment before any other JAX call; afterwards ``jax.devices()``
lists the devices of all processes, the mesh spans them, and the collectives (NCCL
on GPUs, gloo on CPUs) run inside the compiled step. Only process 0 writes
checkpoints, histories and logs.

``train.devices`` counts devices PER PROCESS (``"all"``: every local device), so
one config serves a workstation and a multi-node job alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from physpack.errors import ConfigError

#: Name of the mesh axis that the batch is sharded along.
DATA_AXIS = "data"

Batch = Mapping[str, np.ndarray]
Params = Any  # a pytree of arrays
Sums = Any  # a pytree of float arrays: loss sums, additive over batches
Counts = Any  # a pytree of int/float arrays: normalisers, additive over batches
T = TypeVar("T")


# --------------------------------------------------------------------------------
# Devices and mesh


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The devices of a data-parallel run and the shardings that go with them.

    Attributes:
        mesh: one axis :data:`DATA_AXIS` over all selected devices of all
            processes, process-major (process ``p``'s devices are contiguous).
        local_devices: this process's selected devices, in mesh order.
        first_shard: mesh position of ``local_devices[0]``.
        process_index, process_count: this process and how many there are.
        batches_per_device: ``k``, loader batches each device sums per step
            (gradient accumulation; 1 unless asked). ``k`` devices × 1 batch and
            1 device × ``k`` batches compute the same step.
    """

    mesh: Mesh
    local_devices: tuple[jax.Device, ...]
    first_shard: int
    process_index: int
    process_count: int
    batches_per_device: int = 1

    @property
    def num_devices(self) -> int:
        """Devices of the mesh (all processes): batches per optimisation step."""
        return int(self.mesh.devices.size)

    @property
    def num_local_devices(self) -> int:
        """Devices of this process: batches it reads per step."""
        return len(self.local_devices)

    @property
    def batches_per_step(self) -> int:
        """Loader batches per optimisation step, all processes: ``k·D``. Results
        depend on the device count only through this number."""
        return self.num_devices * self.batches_per_device

    @property
    def batch_sharding(self) -> NamedSharding:
        """Leading (device) axis split over the mesh, one block per device."""
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device (parameters, optimiser state)."""
        return NamedSharding(self.mesh, PartitionSpec())


def select_devices(
    devices: int | Literal["all"] = "all", *, batches_per_device: int = 1
) -> DataParallel:
    """Choose ``devices`` per process (``"all"``: every local device) and build the
    mesh over those of all processes.

    Raises:
        ConfigError: ``devices`` is not ``"all"`` or a positive int, or more devices
            are requested than some process has.
    """
    if batches_per_device < 1:
        raise ConfigError(f"batches_per_device: got {batches_per_device}, expected ≥ 1")
    if devices != "all" and (
        isinstance(devices, bool) or not isinstance(devices, int) or devices < 1
    ):
        raise ConfigError(
            f"train.devices: got {devices!r}, expected 'all' or an int ≥ 1"
        )
    per_process: dict[int, list[jax.Device]] = {}
    for d in jax.devices():
        per_process.setdefault(d.process_index, []).append(d)
    chosen: list[jax.Device] = []
    for p in sorted(per_process):
        mine = sorted(per_process[p], key=lambda d: d.id)
        if devices != "all" and devices > len(mine):
            where = "this process" if p == jax.process_index() else f"process {p}"
            raise ConfigError(
                f"train.devices: {devices} requested but {where} has {len(mine)} "
                f"{mine[0].platform} device(s)"
            )
        chosen += mine if devices == "all" else mine[:devices]
    local = tuple(d for d in chosen if d.process_index == jax.process_index())
    return DataParallel(
        mesh=Mesh(np.array(chosen, dtype=object), (DATA_AXIS,)),
        local_devices=local,
        first_shard=chosen.index(local[0]),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        batches_per_device=int(batches_per_device),
    )


# --------------------------------------------------------------------------------
# Placing data


def stack_batches(batches: Sequence[Batch]) -> dict[str, np.ndarray]:
    """Stack fixed-shape batches along a new leading axis: key → (len(batches), ...),
    in the device's canonical dtypes.

    Raises:
        ValueError: the batches differ in keys, shapes or dtypes (the loader's
            budgets must be fixed for the whole run).
    """
    if not batches:
        raise ValueError("stack_batches: no batches")
    first = batches[0]
    for i, b in enumerate(batches[1:], start=1):
        if b.keys() != first.keys():
            raise ValueError(
                f"stack_batches: batch {i} has keys {sorted(b)}, batch 0 {sorted(first)}"
            )
        for k, v in b.items():
            if (
                np.shape(v) != np.shape(first[k])
                or np.asarray(v).dtype != np.asarray(first[k]).dtype
            ):
                raise ValueError(
                    f"stack_batches: key {k!r} of batch {i} is "
                    f"{np.asarray(v).dtype}{np.shape(v)}, batch 0 "
                    f"{np.asarray(first[k]).dtype}{np.shape(first[k])}; "
                    "batch budgets must be fixed for the run"
                )
    # float64/int64 host arrays become the device's canonical dtypes (float32/int32
    # unless jax_enable_x64): explicit here rather than a warning per transfer.
    return {
        k: np.stack([np.asarray(b[k]) for b in batches]).astype(
            jax.dtypes.canonicalize_dtype(np.asarray(first[k]).dtype), copy=False
        )
        for k in first
    }


def shard_batches(dp: DataParallel, batches: Sequence[Batch]) -> dict[str, jax.Array]:
    """This process's batches for one step (one per local device, or ``k`` per
    device in order) as global arrays of shape ``(k·D, ...)``, sharded along the
    leading axis so that each device holds its own batches."""
    if len(batches) % dp.num_local_devices:
        raise ValueError(
            f"shard_batches: {len(batches)} batches for "
            f"{dp.num_local_devices} local devices"
        )
    per_device = len(batches) // dp.num_local_devices
    stacked = stack_batches(batches)
    return {
        k: jax.make_array_from_process_local_data(
            dp.batch_sharding, v, (dp.num_devices * per_device, *v.shape[1:])
        )
        for k, v in stacked.items()
    }


def replicate(dp: DataParallel, tree: T) -> T:
    """A copy of ``tree`` (identical in every process) on every device of the mesh."""

    def put(x: Any) -> jax.Array:
        if dp.process_count == 1:
            return jax.device_put(x, dp.replicated)
        # Several processes: each supplies its (identical) copy for its devices.
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(dp.replicated, x, x.shape)

    return jax.tree.map(put, tree)


def to_host(tree: T) -> T:
    """Numpy copies of replicated (or single-process) arrays, e.g. to checkpoint."""

    def get(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(
                    "to_host: array sharded across processes; only replicated "
                    "arrays can be read back on one process"
                )
            return np.asarray(jax.device_get(x.addressable_data(0)))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


# --------------------------------------------------------------------------------
# Epoch layout


def empty_batch(template: Batch) -> dict[str, np.ndarray]:
    """A batch that contributes nothing: ``template`` with every ``*_mask`` cleared
    and ``mol_index`` set to -1. Shapes, dtypes and the padding layout (indices,
    segments, geometry) stay the loader's, so the model sees a valid input whose
    masked losses, counts and gradients are exactly zero."""
    out = {k: np.array(v, copy=True) for k, v in template.items()}
    for k, v in out.items():
        if k.endswith("_mask"):
            v[...] = False
    if "mol_index" in out:
        out["mol_index"][...] = -1
    return out


def steps_per_epoch(num_batches: int, batches_per_step: int) -> int:
    """Optimisation steps that consume ``num_batches`` batches, the last one
    possibly short (:func:`step_batches`)."""
    return -(-num_batches // batches_per_step)


def step_batches(
    stream: Iterable[T | None],
    batches_per_step: int,
    first: int = 0,
    count: int | None = None,
    *,
    empty: Callable[[T], T] = empty_batch,  # type: ignore[assignment]
) -> Iterator[list[T]]:
    """Group one epoch's batch stream into steps and yield this process's share.

    Step ``s`` uses stream items ``s·B … s·B + B − 1`` (``B = batches_per_step``);
    slot ``j`` of a step gets item ``s·B + j`` and this process owns slots
    ``first … first + count − 1`` (mesh position ``g`` holds slots ``g·k … g·k +
    k − 1``). When the stream ends inside a step, the missing items are
    ``empty(t)`` for the last real item ``t`` this process saw: all processes run the
    same number of steps (a collective needs every device), and every item of the
    stream is yielded by exactly one process exactly once.

    Every process walks the whole stream, whose order must be the same in all of
    them; items of other processes may be ``None`` (a loader that skips reading
    them), this process's may not.

    Args:
        stream: the epoch's batches, in the loader's deterministic order.
        batches_per_step: ``B``, slots per step over all processes.
        first, count: this process's slots (default: all).
        empty: builds a no-contribution stand-in from a real item.

    Raises:
        ValueError: the slots lie outside the step, an own slot is ``None``, or
            the epoch ended before this process saw a single real batch (fewer
            batches than slots: see :func:`check_batches_per_epoch`).
    """
    count = batches_per_step if count is None else count
    if count < 1 or first < 0 or first + count > batches_per_step:
        raise ValueError(
            f"step_batches: slots {first}..{first + count - 1} outside a step of "
            f"{batches_per_step}"
        )
    template: T | None = None
    group: list[T | None] = []
    for item in stream:
        if item is None and first <= len(group) < first + count:
            raise ValueError(f"step_batches: no batch for own slot {len(group)}")
        if item is not None:
            template = item
        group.append(item)
        if len(group) == batches_per_step:
            yield group[first : first + count]  # type: ignore[misc]
            group = []
    if group:
        mine = group[first : first + count]
        if template is None:
            raise ValueError(
                "step_batches: the epoch ended before this process saw a batch"
            )
        filler = empty(template)
        yield [b if b is not None else filler for b in mine] + [filler] * (
            count - len(mine)
        )


def check_batches_per_epoch(num_batches: int, dp: DataParallel, what: str) -> None:
    """Refuse an epoch with fewer batches than one step has slots.

    Raises:
        ConfigError: naming ``what`` (e.g. the subset) and the counts.
    """
    if num_batches < dp.batches_per_step:
        raise ConfigError(
            f"{what}: {num_batches} batch(es) per epoch for {dp.batches_per_step} "
            f"per step ({dp.num_devices} device(s)); lower loader.batch_size or "
            "train.devices"
        )


def local_step_batches(
    stream: Iterable[T | None], dp: DataParallel, **kw: Any
) -> Iterator[list[T]]:
    """:func:`step_batches` for this process of ``dp``."""
    k = dp.batches_per_device
    return step_batches(
        stream, dp.batches_per_step, dp.first_shard * k, dp.num_local_devices * k, **kw
    )


def broadcast_from_main(tree: T) -> T:
    """Process 0's value of ``tree`` (numpy-convertible leaves of the same shape and
    dtype in every process) in every process, bit for bit: leaves travel as bytes,
    so float64 survives even where JAX computes in float32. The identity when
    single-process; otherwise a collective that every process must call."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(x) for x in leaves]
    raw = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    got = multihost_utils.broadcast_one_to_all(raw)
    out = [
        np.asarray(g, np.uint8).view(a.dtype).reshape(a.shape)
        for g, a in zip(got, arrays)
    ]
    return jax.tree.unflatten(treedef, out)


def _gather_rows(row: np.ndarray) -> np.ndarray:
    """Every process's ``row`` (same shape everywhere), stacked by process."""
    if jax.process_count() == 1:
        return row[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in some process (a collective: all processes call)."""
    return bool(_gather_rows(np.array([bool(flag)], np.int32)).any())


def all_processes_agree(value: bytes | str) -> bool:
    """Whether every process passed the same ``value`` (compared by sha256; a
    collective: all processes call)."""
    import hashlib

    data = value.encode() if isinstance(value, str) else value
    digest = np.frombuffer(hashlib.sha256(data).digest(), np.uint8).astype(np.int32)
    rows = _gather_rows(digest)
    return bool((rows == rows[0]).all())


# --------------------------------------------------------------------------------
# Data-parallel loss and gradient


def _block_partials(
    partial_fn: Callable[[Params, Batch], tuple[Sums, Counts]],
    params: Params,
    block: Mapping[str, jax.Array],
) -> tuple[Sums, Counts]:
    """Sums and counts of one device's block of ``k`` stacked batches."""
    k = next(iter(block.values())).shape[0]
    if k == 1:
        return partial_fn(params, {key: v[0] for key, v in block.items()})
    sums, counts = jax.vmap(partial_fn, in_axes=(None, 0))(params, block)
    return jax.tree.map(lambda x: x.sum(0), (sums, counts))


def data_parallel_value_and_grad(
    partial_fn: Callable[[Params, Batch], tuple[Sums, Counts]],
    combine: Callable[[Sums, Counts], jax.Array],
    mesh: Mesh,
) -> Callable[[Params, Mapping[str, jax.Array]], tuple[tuple[jax.Array, Any], Params]]:
    """Turn a per-batch loss into a data-parallel loss and gradient.

    Args:
        partial_fn: ``(params, batch) -> (sums, counts)`` for ONE packed batch:
            ``sums`` a pytree of loss sums over its molecules/atoms (e.g. Σ squared
            energy errors, Σ squared force components) and ``counts`` a pytree of
            the matching normalisers (molecules, force components), both additive
            over batches; counts must not depend on ``params``.
        combine: ``(sums, counts) -> loss``, scalar, e.g. ``w_E·ΣdE²/n_mol +
            w_F·ΣdF²/(3·n_atoms)``.
        mesh: a one-axis mesh named :data:`DATA_AXIS`.

    Returns:
        ``f(params, stacked) -> ((loss, (sums, counts)), grads)`` with ``params``
        replicated and ``stacked`` a batch dict of shape ``(k·D, ...)`` sharded along
        :data:`DATA_AXIS`. ``sums``/``counts`` are the global totals and ``loss``
        and ``grads`` equal ``combine`` and its gradient on the concatenation of all
        ``k·D`` batches. Use inside ``jax.jit``.

    Each device computes its batches' sums and counts, one ``psum`` makes them
    global, and ``combine`` runs on the totals (see the module docstring for why).
    Gradients need no explicit reduction: inside ``shard_map`` the replicated
    ``params`` enter the per-device computation through an implicit broadcast
    whose transpose is a ``psum``, so ``grad`` already returns
    ``Σ_devices ∂loss/∂params`` — the single-device gradient of the whole step.
    """

    def per_device(
        params: Params, block: Mapping[str, jax.Array]
    ) -> tuple[tuple[jax.Array, Any], Params]:
        def global_loss(p: Params) -> tuple[jax.Array, tuple[Sums, Counts]]:
            sums, counts = _block_partials(partial_fn, p, block)
            sums = jax.lax.psum(sums, DATA_AXIS)
            counts = jax.lax.psum(jax.lax.stop_gradient(counts), DATA_AXIS)
            return combine(sums, counts), (sums, counts)

        return jax.value_and_grad(global_loss, has_aux=True)(params)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=((PartitionSpec(), PartitionSpec()), PartitionSpec()),
    )


def data_parallel_sums(
    partial_fn: Callable[[Params, Batch], tuple[Sums, Counts]],
    mesh: Mesh,
) -> Callable[[Params, Mapping[str, jax.Array]], tuple[Sums, Counts]]:
    """Global ``(sums, counts)`` of a sharded step without gradients (validation)."""

    def per_device(
        params: Params, block: Mapping[str, jax.Array]
    ) -> tuple[Sums, Counts]:
        return jax.lax.psum(_block_partials(partial_fn, params, block), DATA_AXIS)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(DATA_AXIS)),
        out_specs=PartitionSpec(),
    )
