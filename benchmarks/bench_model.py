"""Model cost per molecule: the shipped model against variants of it (by default
``max_degree`` 1, equivariant features), side by side in one run, on batches of
the demo data.

Every model has the shipped ``model:`` settings of ``config.yaml`` except what its
``--variant NAME:key=value,key=value`` changes, sees the same fixed-shape packed
batches (``--batch`` molecules
each) and are timed after compilation, alternately (``--rounds``), each figure
the best pass over the batches (the least disturbed by other load), for two
costs: a *training step* (gradient
of an energy + force loss with respect to the parameters, which differentiates
the forces once more) and *inference* (energies and forces). The parameter count
of each model is printed too.

    python benchmarks/bench_model.py                # ~1 minute on 2 cores
    python benchmarks/bench_model.py --seconds 20 --batch 32
    python benchmarks/bench_model.py --variant deg1:max_degree=1 \
        --variant angular:angular_degree=2,angular_interactions=3

Target (issue 11): degree 1 costs at most 3× degree 0 per molecule.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a model beside the shipped one: model-section keys changed "
        "(values as YAML; repeatable; default: max_degree 1)",
    )
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
    configs = {"shipped": base}
    for text in args.variant or ["max_degree 1:max_degree=1"]:
        name, _, items = text.partition(":")
        changes = {}
        for item in filter(None, items.split(",")):
            key, _, value = item.partition("=")
            changes[key] = yaml.safe_load(value)
        configs[name] = section_from_mapping(
            ModelConfig, {**section, **changes}, "model"
        )
    fns = {name: model_functions(cfg, batches) for name, cfg in configs.items()}
    results: dict[str, dict[str, float]] = {
        name: {"params": fns[name]["params"]} for name in fns
    }
    # alternate the measurements so that every model sees the same machine load
    for kind in ("train", "infer"):
        for _ in range(args.rounds):
            for name in fns:
                rate = best_rate(fns[name][kind], inputs, args.seconds / args.rounds)
                key = f"{kind}_mol_s"
                results[name][key] = max(results[name].get(key, 0.0), rate * molecules)
    width = max(16, *(len(n) + 2 for n in fns))
    print(f"{'':28s}" + "".join(f"{n:>{width}s}" for n in fns))
    for key, label in (
        ("train_mol_s", "train step [molecules/s]"),
        ("infer_mol_s", "inference [molecules/s]"),
        ("params", "parameters"),
    ):
        print(f"{label:28s}" + "".join(f"{results[n][key]:>{width},.0f}" for n in fns))
    shipped = results["shipped"]["train_mol_s"]
    print(
        f"{'cost per train step / shipped':28s}"
        + "".join(
            f"{shipped / results[n]['train_mol_s']:>{width - 1}.2f}x" for n in fns
        )
    )


if __name__ == "__main__":
    main()
