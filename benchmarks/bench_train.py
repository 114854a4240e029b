"""Training throughput: packed fixed-shape batches versus dense batches padded to
``num_atoms`` (the old approach), side by side, on the demo data and on a QM9-like
synthetic set; and the loader's share of the step time.

Both forms feed the same model and the same jitted train step (one compilation per
form); the dense form is the loader's ``batches(num_atoms=...)`` flattened to the
model's input (B·W atoms, B·W·(W−1) pairs, masks). Throughput counts real molecules
per second of steady-state training (compilation excluded).

The loader's share is measured twice: *exposed* — how much longer a step takes
when fed by the loader (prefetch thread, host preparation and transfer, as in
training) than when fed batches already in memory, relative to the loader-fed
step; *raw* — single-threaded assembly plus host preparation of one batch over one
step's time (its cost if nothing overlapped).

    python benchmarks/bench_train.py                       # model of config.yaml
    python benchmarks/bench_train.py --seconds 30 --features 32 --synthetic 4000

Prints one table; exit status 0. Targets (issue 4): packed ≥ 2× dense on CPU,
exposed loader share < 5 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from physpack.config import LoaderConfig, ModelConfig, TrainConfig, section_from_mapping
from physpack.data.convert import convert_npz
from physpack.data.loader import PackedMemmapLoader
from physpack.data.synthetic import write_padded_npz
from physpack.model.physnet import init_params, model_from_config
from physpack.training.losses import LossWeights
from physpack.training.optim import initial_schedule, make_optimizer
from physpack.training.reference import fit_energy_constants
from physpack.training.state import create_train_state
from physpack.training.steps import build_steps, prepare_batch

ROOT = Path(__file__).resolve().parents[1]


def dense_as_model_input(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A dense batch (B molecules × W atoms) flattened to the packed keys."""
    B, W = batch["Z"].shape
    out = {
        "Z": batch["Z"].reshape(B * W),
        "R": batch["R"].reshape(B * W, 3),
        "atom_mask": batch["atom_mask"].reshape(B * W),
        "batch_segments": batch["batch_segments"],
        "dst_idx": batch["dst_idx"],
        "src_idx": batch["src_idx"],
        "pair_mask": batch["pair_mask"],
        "E": batch["E"],
        "Qtot": batch["Qtot"],
        "N": batch["N"],
        "molecule_mask": batch["molecule_mask"],
    }
    if "F" in batch:
        out["F"] = batch["F"].reshape(B * W, 3)
    if "D" in batch:
        out["D"] = batch["D"]
    return out


def endless(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def measure(
    name: str,
    stream: Iterator,
    step: Callable,
    state: dict,
    scale: jax.Array,
    seconds: float,
) -> dict[str, float]:
    """Steady-state molecules/s of one batch stream, read as the trainer reads it:
    the previous step's results are fetched after the next step is dispatched."""
    state, info = step(state, next(stream), scale)  # compiles
    jax.block_until_ready(info)
    for _ in range(2):  # warm caches
        state, info = step(state, next(stream), scale)
    jax.block_until_ready(info)
    molecules = 0.0
    steps = 0
    pending = None
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or steps < 5:
        state, info = step(state, next(stream), scale)
        if pending is not None:
            molecules += float(pending["n_mol"])
        pending = info
        steps += 1
    molecules += float(pending["n_mol"])
    wall = time.perf_counter() - t0
    return {"name": name, "mol_per_s": molecules / wall, "step_ms": 1e3 * wall / steps}


def cycle(batches: list) -> Iterator:
    """The same device-resident batches over and over: training without a loader."""
    while True:
        yield from batches


def raw_loader_ms(loader: PackedMemmapLoader, prep: Callable, n: int = 20) -> float:
    """Single-threaded assembly + host preparation of one packed batch [ms]."""
    plan_batches = loader.packed_batches(epoch=0)
    t0 = time.perf_counter()
    for _, b in zip(range(n), plan_batches):
        prep(b)
    return 1e3 * (time.perf_counter() - t0) / n


def bench_dataset(
    label: str,
    packed: Path,
    model_cfg: ModelConfig,
    loader_cfg: LoaderConfig,
    train_cfg: TrainConfig,
    seconds: float,
) -> list[dict[str, float]]:
    model = model_from_config(model_cfg)
    probe = PackedMemmapLoader(packed, loader_cfg.batch_size, shuffle=False, prefetch=0)
    constants, _ = fit_energy_constants(probe, model_cfg.max_atomic_number)
    width = loader_cfg.num_atoms or int(probe.sizes.max())
    weights = LossWeights(train_cfg.energy_weight, train_cfg.forces_weight, 0.0)
    tx = make_optimizer(train_cfg)
    scale = jnp.float32(constants.scale)

    def fresh_state() -> dict:
        params = init_params(model, jax.random.PRNGKey(0), probe.assemble(np.arange(1)))
        return create_train_state(params, tx, initial_schedule(train_cfg, 1000))

    def put(b: dict) -> dict:
        return jax.device_put(prepare_batch(b, constants))

    def put_dense(b: dict) -> dict:
        return jax.device_put(prepare_batch(dense_as_model_input(b), constants))

    packed_loader = PackedMemmapLoader(
        packed,
        loader_cfg.batch_size,
        bucket_size=loader_cfg.bucket_size,
        prefetch=max(loader_cfg.prefetch, 1),
        device_put=put,
    )
    dense_loader = PackedMemmapLoader(
        packed,
        loader_cfg.batch_size,
        bucket_size=loader_cfg.bucket_size,
        prefetch=max(loader_cfg.prefetch, 1),
        device_put=put_dense,
    )
    rows = []
    for form, make in (
        ("packed", packed_loader.packed_batches),
        ("dense", lambda: dense_loader.batches(num_atoms=width)),
    ):
        steps = build_steps(model, tx, train_cfg, weights)
        row = measure(
            f"{label} {form}", endless(make), steps.train, fresh_state(), scale, seconds
        )
        row["compilations"] = steps.compilations["train_step"]
        rows.append(row)
    # The loader's exposed cost: the same steps fed one epoch of batches already in
    # memory, alternating with loader-fed runs (3 rounds, median: the machine's
    # background load drifts).
    steps = build_steps(model, tx, train_cfg, weights)
    fresh = PackedMemmapLoader(
        packed, loader_cfg.batch_size, bucket_size=loader_cfg.bucket_size, prefetch=0
    )
    resident = [put(b) for _, b in zip(range(512), fresh.packed_batches())]
    shares = []
    for _ in range(3):
        fed = measure(
            "", endless(packed_loader.packed_batches), steps.train, fresh_state(),
            scale, seconds / 3,
        )  # fmt: skip
        mem = measure(
            "", cycle(resident), steps.train, fresh_state(), scale, seconds / 3
        )
        shares.append(1.0 - mem["step_ms"] / fed["step_ms"])
    rows[0]["exposed_loader_share"] = max(0.0, float(np.median(shares)))
    raw = raw_loader_ms(
        PackedMemmapLoader(
            packed,
            loader_cfg.batch_size,
            bucket_size=loader_cfg.bucket_size,
            prefetch=0,
        ),
        lambda b: prepare_batch(b, constants),
    )
    rows[0]["raw_loader_share"] = raw / rows[0]["step_ms"]
    b = packed_loader.budget
    rows[0]["shape"] = f"A={b.max_atoms} P={b.max_pairs} M={b.max_molecules}"
    B = loader_cfg.batch_size
    rows[1]["shape"] = f"A={B * width} P={B * width * (width - 1)} M={B}"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--demo", default=str(ROOT / "data" / "demo.npz"))
    parser.add_argument(
        "--synthetic", type=int, default=3000, help="QM9-like molecules"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed per form")
    parser.add_argument("--features", type=int, help="override model.features")
    parser.add_argument("--batch-size", type=int, help="override loader.batch_size")
    args = parser.parse_args(argv)

    conf = yaml.safe_load(Path(args.config).read_text()) or {}
    model_cfg = section_from_mapping(ModelConfig, conf.get("model"), "model")
    loader_cfg = section_from_mapping(LoaderConfig, conf.get("loader"), "loader")
    train_cfg = section_from_mapping(TrainConfig, conf.get("train"), "train")
    if args.features:
        model_cfg = dataclasses.replace(model_cfg, features=args.features)
    if args.batch_size:
        loader_cfg = dataclasses.replace(loader_cfg, batch_size=args.batch_size)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {model_cfg}; "
        f"batch_size={loader_cfg.batch_size}",
        flush=True,
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = []
        if Path(args.demo).is_file():
            convert_npz(Path(args.demo), Path(tmp) / "demo")
            sets.append(("demo", Path(tmp) / "demo"))
        else:
            print(f"(no {args.demo}: demo data skipped)")
        npz = write_padded_npz(Path(tmp) / "qm9like.npz", args.synthetic, seed=0)
        convert_npz(npz, Path(tmp) / "qm9like")
        sets.append(("qm9-like", Path(tmp) / "qm9like"))
        for label, path in sets:
            rows += bench_dataset(
                label, path, model_cfg, loader_cfg, train_cfg, args.seconds
            )

    print(
        f"\n{'form':<18}{'shape':<24}{'mol/s':>9}{'step ms':>9}{'speedup':>9}"
        f"{'loader exposed':>16}{'loader raw':>12}{'compiles':>10}"
    )
    for packed_row, dense_row in zip(rows[::2], rows[1::2]):
        for r in (packed_row, dense_row):
            speed = r["mol_per_s"] / dense_row["mol_per_s"]
            share = {
                k: f"{100 * r[k]:.1f}%" if k in r else "-"
                for k in ("exposed_loader_share", "raw_loader_share")
            }
            print(
                f"{r['name']:<18}{r['shape']:<24}{r['mol_per_s']:>9.0f}"
                f"{r['step_ms']:>9.1f}{speed:>8.2f}x"
                f"{share['exposed_loader_share']:>16}{share['raw_loader_share']:>12}"
                f"{r['compilations']:>10}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
