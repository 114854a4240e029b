"""Model cost per molecule: ``max_degree`` 0 (invariant PhysNet) against 1
(equivariant features), side by side in one run, on batches of the demo data.

Both models have the shipped ``model:`` settings of ``config.yaml`` except
``max_degree``, see the same fixed-shape packed batches (``--batch`` molecules
each) and are timed after compilation, alternately (``--rounds``), each figure
the best pass over the batches (the least disturbed by other load), for two
costs: a *training step* (gradient
of an energy + force loss with respect to the parameters, which differentiates
the forces once more) and *inference* (energies and forces). The parameter count
of each model is printed too.

    python benchmarks/bench_model.py                # ~1 minute on 2 cores
    python benchmarks/bench_model.py --seconds 20 --batch 32

Target (issue 11): degree 1 costs at most 3× degree 0 per molecule.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from physpack.config import ModelConfig, section_from_mapping
from physpack.model.physnet import (
    device_inputs,
    energy_and_forces,
    init_params,
    model_from_config,
    molecules_to_batch,
)

ROOT = Path(__file__).resolve().parents[1]


def demo_batches(npz: Path, batch: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` packed batches of ``batch`` random demo molecules, one budget."""
    data = np.load(npz)
    n_atoms = (data["Z"] > 0).sum(axis=1)
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(n_atoms), batch, replace=False) for _ in range(count)]
    mols = [
        [
            {
                "Z": data["Z"][i, : n_atoms[i]],
                "R": data["R"][i, : n_atoms[i]],
                "F": data["F"][i, : n_atoms[i]],
                "E": 0.0,
            }
            for i in p
        ]
        for p in picks
    ]
    A = max(int(n_atoms[p].sum()) for p in picks) + 1
    P = max(int((n_atoms[p] * (n_atoms[p] - 1)).sum()) for p in picks)
    return [
        molecules_to_batch(m, max_atoms=A, max_pairs=P, max_molecules=batch + 1)
        for m in mols
    ]


def best_rate(fn: Callable[[object], object], inputs: list, seconds: float) -> float:
    """Calls per second of ``fn`` over one pass through ``inputs``, best of the
    passes that fit in ``seconds`` (the best pass is the least disturbed by other
    load on a shared machine)."""
    jax.block_until_ready(fn(inputs[0]))  # compile
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        for x in inputs:
            jax.block_until_ready(fn(x))
        best = max(best, len(inputs) / (time.perf_counter() - start))
    return best


def model_functions(cfg: ModelConfig, batches: list[dict]) -> dict:
    """Parameter count and the jitted train-step and inference calls of a model."""
    model = model_from_config(cfg)
    params = init_params(model, jax.random.PRNGKey(0), batches[0])
    # random heads: zero-initialised outputs would let XLA skip work
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a) + 0.1 * rng.normal(size=a.shape), a.dtype),
        params,
    )
    scale = jnp.float32(1.0)

    def loss(p, x, f_ref):
        out = energy_and_forces(p, model, x, scale)
        return jnp.mean(out["energy_residual"] ** 2) + jnp.mean(
            (out["forces"] - f_ref) ** 2
        )

    grad = jax.jit(jax.grad(loss))
    infer = jax.jit(lambda p, x: energy_and_forces(p, model, x, scale))
    return {
        "params": sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)),
        "train": lambda xf: grad(params, *xf),
        "infer": lambda xf: infer(params, xf[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--npz", type=Path, default=ROOT / "data" / "demo.npz")
    parser.add_argument("--batch", type=int, default=16, help="molecules per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations")
    args = parser.parse_args()
    section = yaml.safe_load(args.config.read_text()).get("model", {})
    base = section_from_mapping(ModelConfig, section, "model")
    batches = demo_batches(args.npz, args.batch, 8)
    print(
        f"demo data, batches of {args.batch} molecules, {jax.devices()[0].platform}, "
        f"model: features={base.features} num_iterations={base.num_iterations} "
        f"n_res={base.n_res}/{base.n_res_interaction}/{base.n_res_output}"
    )
    inputs = [(device_inputs(b), jnp.asarray(b["F"], jnp.float32)) for b in batches]
    molecules = int(np.sum(batches[0]["molecule_mask"]))
    fns = {
        d: model_functions(dataclasses.replace(base, max_degree=d), batches)
        for d in (0, 1)
    }
    results: dict[int, dict[str, float]] = {
        d: {"params": fns[d]["params"]} for d in fns
    }
    # alternate the measurements so that both models see the same machine load
    for kind in ("train", "infer"):
        for _ in range(args.rounds):
            for d in (0, 1):
                rate = best_rate(fns[d][kind], inputs, args.seconds / args.rounds)
                key = f"{kind}_mol_s"
                results[d][key] = max(results[d].get(key, 0.0), rate * molecules)
    print(f"{'':28s}{'max_degree 0':>14s}{'max_degree 1':>14s}{'ratio 1/0':>11s}")
    for key, label in (
        ("train_mol_s", "train step [molecules/s]"),
        ("infer_mol_s", "inference [molecules/s]"),
    ):
        a, b = results[0][key], results[1][key]
        print(f"{label:28s}{a:14.1f}{b:14.1f}{a / b:10.2f}x")
    print(
        f"{'parameters':28s}{results[0]['params']:14,d}{results[1]['params']:14,d}"
        f"{results[1]['params'] / results[0]['params']:10.2f}x"
    )


if __name__ == "__main__":
    main()
