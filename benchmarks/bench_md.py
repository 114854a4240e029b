"""``physpack md`` against ASE's VelocityVerlet with the PhysNetCalculator, side by
side in one run: throughput, agreement of the trajectories, energy conservation,
and scaling with the number of molecules integrated together.

    python benchmarks/bench_md.py --checkpoint results/model/best.ckpt \\
        --structures molecules.extxyz [--ase-steps 1000] [--steps 4000] \\
        [--scaling 1,6,64,512] [--scaling-steps 100] [--output bench_md.json]

1. ASE: each molecule alone, ``VelocityVerlet`` at 0.5 fs for ``--ase-steps`` steps
   with the PhysNetCalculator (compiled once per size before the clock starts),
   starting from the velocities ``physpack md`` draws (300 K, seed 0).
2. ``physpack md``: all molecules side by side, NVE, ``--steps`` steps (compiled
   before the clock starts; the clock includes the host's stability checks and
   trajectory writing, every 50 steps).
3. Agreement: the largest position difference between the two at steps 0, 100, ...
   up to ``--ase-steps`` (float32 arithmetic in both; chaos amplifies rounding).
4. Energy conservation: the NVE drift (slope of the total energy, meV/atom/ps) of
   each, over the same steps.
5. Scaling: the molecules repeated to 1, 6, 64, 512 copies, ``--scaling-steps``
   steps each: molecule-steps per second.
6. What bounds both: force evaluations per second of the model alone, the packed
   batch of all molecules (one compiled call, no integration) against the
   calculator's ``calculate`` for one molecule at a time (the model plus the
   calculator's per-call work, no integrator).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))  # this tree's code

TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0


def drift_meV_per_atom_ps(times_ps, totals_eV, n_atoms: int) -> float:
    """Slope of a least-squares line through the total energy, meV/atom/ps (the
    definition ``physpack md`` reports)."""
    slope = np.polyfit(np.asarray(times_ps), np.asarray(totals_eV), 1)[0]
    return float(slope / n_atoms * 1000.0)


def run_ase(checkpoint: str, molecules, steps: int, every: int = 100) -> dict:
    """Each molecule alone with ASE's VelocityVerlet: positions every ``every``
    steps, throughput and drift."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from physpack.model.calculator import PhysNetCalculator
    from physpack.simulation.velocities import starting_velocities

    calc = PhysNetCalculator(checkpoint)
    positions, drifts, seconds = [], [], 0.0
    for k, start in enumerate(molecules):
        atoms = start.copy()
        atoms.calc = calc
        atoms.set_velocities(
            starting_velocities(atoms, TEMPERATURE_K, np.random.default_rng([0, k]))
        )
        atoms.get_forces()  # compile this size before the clock
        dyn = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
        frames, times, totals = [atoms.positions.copy()], [0.0], []
        totals.append(atoms.get_total_energy())
        t0 = time.perf_counter()
        for b in range(steps // every):
            dyn.run(every)
            frames.append(atoms.positions.copy())
            times.append((b + 1) * every * TIMESTEP_FS / 1000.0)
            totals.append(atoms.get_total_energy())
        seconds += time.perf_counter() - t0
        positions.append(frames)
        drifts.append(drift_meV_per_atom_ps(times, totals, len(atoms)))
    return {
        "positions": positions,
        "seconds": seconds,
        "molecule_steps_per_second": len(molecules) * steps / seconds,
        "drift_meV_per_atom_ps": drifts,
    }


def run_physpack(
    checkpoint: str, molecules, steps: int, interval: int, work: Path
) -> dict:
    """All molecules side by side with ``physpack md``."""
    from ase.io import read
    from physpack.simulation.md import MDSettings, run_md

    settings = MDSettings(
        temperature_K=TEMPERATURE_K,
        picoseconds=steps * TIMESTEP_FS / 1000.0,
        timestep_fs=TIMESTEP_FS,
        interval=interval,
    )
    record = run_md([checkpoint], molecules, settings, work, log=lambda line: None)
    positions = [
        [f.positions for f in read(work / m["trajectory"], index=":")]
        for m in record["molecules"]
    ]
    return {**record, "positions": positions}


def force_rates(checkpoint: str, molecules, calls: int = 100) -> dict:
    """Molecule force evaluations per second: the packed batch of all molecules in
    one compiled call, and the ASE calculator one molecule at a time."""
    import jax
    from ase.calculators.calculator import all_changes
    from physpack.model.calculator import PhysNetCalculator
    from physpack.model.physnet import device_inputs
    from physpack.simulation.dynamics import PackedMolecules, committee_forces

    calc = PhysNetCalculator(checkpoint)
    system = PackedMolecules.of(molecules, [0.0] * len(molecules))
    inputs = device_inputs(system.batch)
    members = calc.members
    params = [m.params for m in members]
    call = jax.jit(lambda p, r: committee_forces(p, members, inputs, r)[0])
    call(params, inputs["R"]).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(calls):
        call(params, inputs["R"]).block_until_ready()
    packed = len(molecules) * calls / (time.perf_counter() - t0)
    seconds = 0.0
    for start in molecules:
        atoms = start.copy()
        calc.calculate(atoms, ["forces"], all_changes)  # compile this size
        t0 = time.perf_counter()
        for _ in range(calls):
            calc.calculate(atoms, ["forces"], all_changes)
        seconds += time.perf_counter() - t0
    return {"packed": packed, "calculator": len(molecules) * calls / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--structures", required=True, help="molecules (any ASE file)")
    parser.add_argument("--ase-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--scaling", default="1,6,64,512")
    parser.add_argument("--scaling-steps", type=int, default=100)
    parser.add_argument("--output", help="JSON of the figures")
    args = parser.parse_args()

    from physpack.simulation.md import read_molecules

    molecules = read_molecules(args.structures)
    sizes = [len(a) for a in molecules]
    print(
        f"{len(molecules)} molecules, {min(sizes)}-{max(sizes)} atoms, NVE 300 K, 0.5 fs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ase = run_ase(args.checkpoint, molecules, args.ase_steps)
        agree = run_physpack(
            args.checkpoint, molecules, args.ase_steps, 100, tmp / "agree"
        )
        ours = run_physpack(args.checkpoint, molecules, args.steps, 50, tmp / "speed")
        deviation = [
            float(
                max(
                    np.abs(np.asarray(a) - np.asarray(b)).max()
                    for a, b in zip(
                        ase["positions"][k], agree["positions"][k], strict=True
                    )
                )
            )
            for k in range(len(molecules))
        ]
        by_step = [
            float(
                max(
                    np.abs(ase["positions"][k][j] - agree["positions"][k][j]).max()
                    for k in range(len(molecules))
                )
            )
            for j in range(len(ase["positions"][0]))
        ]
        rates = force_rates(args.checkpoint, molecules)
        scaling = {}
        for count in [int(c) for c in args.scaling.split(",")]:
            batch = [molecules[k % len(molecules)] for k in range(count)]
            record = run_physpack(
                args.checkpoint, batch, args.scaling_steps, 50, tmp / f"scale{count}"
            )
            scaling[count] = record["molecule_steps_per_second"]

    ratio = ours["molecule_steps_per_second"] / ase["molecule_steps_per_second"]
    ours_drift = [m["energy_drift_meV_per_atom_ps"] for m in agree["molecules"]]
    print()
    print(f"{'':44s}{'ASE VelocityVerlet':>20s}{'physpack md':>14s}")
    print(
        f"{'molecule-steps/s (six molecules)':44s}"
        f"{ase['molecule_steps_per_second']:20.0f}{ours['molecule_steps_per_second']:14.0f}"
    )
    print(f"{'ratio':44s}{'1.0':>20s}{ratio:14.1f}")
    print(
        f"{'|drift| mean over molecules [meV/atom/ps]':44s}"
        f"{np.mean(np.abs(ase['drift_meV_per_atom_ps'])):20.4f}"
        f"{np.mean(np.abs(ours_drift)):14.4f}"
    )
    print(f"(drift over the first {args.ase_steps} steps of both)")
    print()
    print("largest |Δr| between the two trajectories [Å], all molecules, at step:")
    for j, d in enumerate(by_step):
        print(f"  {j * 100:5d}: {d:.2e}")
    print()
    print("force evaluations alone (molecule-evaluations/s):")
    print(f"  ASE calculator, one molecule at a time: {rates['calculator']:10.0f}")
    print(f"  packed batch, one compiled call:        {rates['packed']:10.0f}")
    print()
    print("scaling: molecules side by side -> molecule-steps/s")
    for count, rate in scaling.items():
        print(f"  {count:5d}: {rate:10.0f}")
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "ase_molecule_steps_per_second": ase["molecule_steps_per_second"],
                    "physpack_molecule_steps_per_second": ours[
                        "molecule_steps_per_second"
                    ],
                    "ratio": ratio,
                    "ase_drift_meV_per_atom_ps": ase["drift_meV_per_atom_ps"],
                    "physpack_drift_meV_per_atom_ps": ours_drift,
                    "max_deviation_A_by_molecule": deviation,
                    "max_deviation_A_by_step": by_step,
                    "scaling_molecule_steps_per_second": scaling,
                    "force_evaluations_per_second": rates,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
