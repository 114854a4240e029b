"""An ASE calculator for a trained PhysNet checkpoint.

    from ase.build import molecule
    from physpack.model.calculator import PhysNetCalculator

    atoms = molecule("CH3OH")
    atoms.calc = PhysNetCalculator("results/model/best.ckpt")
    atoms.get_potential_energy()  # eV
    atoms.get_forces()            # eV/Å, (n, 3)

Units are ASE's: energies in eV, forces in eV/Å, dipole moments in e·Å, charges in
e — the checkpoint's canonical units, so nothing is converted.

Total charge (used by models with charges), first found of: ``atoms.info["charge"]``,
the sum of ``atoms.get_initial_charges()`` when the atoms have initial charges, the
calculator's ``charge`` argument. A change of it, like a change of positions,
invalidates the cached results.

Several checkpoints make a committee: the results are the members' mean, and
``results["energy_std"]`` (eV) and ``results["forces_std"]`` ((n_atoms, 3), eV/Å)
hold their spread (standard deviation over members, ddof 0), with each member's
energy in ``results["energy_members"]``; the members' predictions take an element
only if every member was trained on it.

A model trained on data with D3 dispersion subtracted (``data.dispersion``; the
checkpoint's ``dispersion``) gets D3 added back: ``energy`` and ``forces`` are the
network's plus D3 of the geometry at hand (:class:`physpack.dispersion.D3`, which
needs the ``d3`` extra), ``results["energy_dispersion"]`` (eV) and
``results["forces_dispersion"]`` ((n_atoms, 3), eV/Å) hold the D3 part, and
:attr:`PhysNetCalculator.dispersion_label` says which (e.g. ``D3(BJ)/pbe0``). The
members of a committee share their dispersion settings.

Each molecule is one packed batch of the loader's contract (one molecule slot plus
the padding slot, all ordered atom pairs i ≠ j, as the loader builds them); the
model is compiled once per atom count and the compiled function kept, so a
molecular-dynamics run compiles once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from physpack.dispersion import D3, committee_d3
from physpack.errors import InputError
from physpack.model.checkpoint import Checkpoint
from physpack.model.checkpoint import load as load_checkpoint
from physpack.model.geometry import check_coincident_atoms
from physpack.model.physnet import device_inputs, energy_and_forces, molecules_to_batch
from physpack.units import CANONICAL_UNITS

#: units ASE expects, which the checkpoint must declare
_ASE_UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"}


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """The batch template and compiled model of one atom count."""

    template: dict[str, np.ndarray]
    run: Callable[..., dict[str, jax.Array]]


@dataclasses.dataclass
class Member:
    """One model of the calculator: checkpoint, device parameters, compiled sizes."""

    checkpoint: Checkpoint
    path: Path | None
    params: Any
    scale: jax.Array
    compiled: dict[int, _Compiled]


def load_member(checkpoint: str | os.PathLike | Checkpoint) -> Member:
    """A checkpoint (path or loaded) with its parameters on the device; InputError
    unless its units are ASE's (eV, Å)."""
    if isinstance(checkpoint, Checkpoint):
        ckpt, path = checkpoint, None
    else:
        path = Path(checkpoint)
        ckpt = load_checkpoint(path)
    for kind, unit in _ASE_UNITS.items():
        found = ckpt.units.get(kind, CANONICAL_UNITS[kind])
        if found != unit:
            raise InputError(
                f"{path or 'checkpoint'}: units.{kind} is {found!r}; the calculator "
                f"needs {unit!r}"
            )
    return Member(
        checkpoint=ckpt,
        path=path,
        params=jax.device_put(ckpt.params),
        scale=jnp.float32(ckpt.constants.scale),
        compiled={},
    )


class PhysNetCalculator(Calculator):
    """ASE calculator of energy, forces (and, with charges, dipole and charges).

    Args:
        checkpoint: path of a ``best.ckpt`` (or an already loaded
            :class:`~physpack.model.checkpoint.Checkpoint`), or a sequence of them
            (a committee: mean and spread).
        charge: total charge of the molecule in e, used by models with charges,
            when the atoms carry none (:meth:`total_charge`).
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Raises:
        InputError: the checkpoint is missing, truncated, of a newer format or not
            in eV/Å; committee members with different dispersion settings; at
            calculation time, an element the model was never trained for,
            periodic boundary conditions or coincident atoms.
        ConfigError: a checkpoint with dispersion and dftd3 not installed.
    """

    default_parameters: ClassVar[dict[str, Any]] = {"charge": 0.0}

    def __init__(
        self,
        checkpoint: str | os.PathLike | Checkpoint | Sequence[str | os.PathLike],
        charge: float = 0.0,
        **kwargs,
    ):
        super().__init__(charge=float(charge), **kwargs)
        many = not isinstance(checkpoint, (str, os.PathLike, Checkpoint))
        sources = list(checkpoint) if many else [checkpoint]
        if not sources:
            raise InputError("PhysNetCalculator: no checkpoint given")
        self._members = [load_member(c) for c in sources]
        first = self._members[0]
        self.checkpoint, self.checkpoint_path = first.checkpoint, first.path
        self.model = first.checkpoint.model
        self.implemented_properties: list[str] = ["energy", "free_energy", "forces"]
        if all(m.checkpoint.model_config.charges for m in self._members):
            self.implemented_properties += ["dipole", "charges"]
        known = set.intersection(
            *(set(m.checkpoint.constants.elements) for m in self._members)
        )
        self._known = np.asarray(sorted(known), np.int64)
        self._d3 = self._dispersion_model()

    def _dispersion_model(self) -> D3 | None:
        """The members' shared D3 (``None``: trained without dispersion)."""
        return committee_d3(
            [
                (str(m.path or f"member {k}"), m.checkpoint.dispersion)
                for k, m in enumerate(self._members)
            ]
        )

    @property
    def dispersion_label(self) -> str | None:
        """The D3 variant that energies and forces include, e.g. ``D3(BJ)/pbe0``
        (``None``: none)."""
        return None if self._d3 is None else self._d3.settings.label

    @property
    def members(self) -> tuple[Member, ...]:
        """The models: each checkpoint with its parameters on the device."""
        return tuple(self._members)

    @property
    def committee_size(self) -> int:
        """Number of models (1 for a single checkpoint)."""
        return len(self._members)

    # -- compilation ------------------------------------------------------------
    @property
    def compiled_sizes(self) -> tuple[int, ...]:
        """Atom counts for which the model has been compiled, in order."""
        return tuple(self._members[0].compiled)

    def _for_size(self, member: Member, n: int) -> _Compiled:
        """The template batch and compiled function for molecules of ``n`` atoms."""
        if n not in member.compiled:
            template = molecules_to_batch(
                [{"Z": np.ones(n, np.int32), "R": np.zeros((n, 3), np.float32)}]
            )
            inputs = device_inputs(template)
            model = member.checkpoint.model

            def run(
                params: Any, inputs: dict[str, jax.Array], scale: jax.Array
            ) -> dict[str, jax.Array]:
                return energy_and_forces(params, model, inputs, scale)

            compiled = jax.jit(run).lower(member.params, inputs, member.scale).compile()
            member.compiled[n] = _Compiled(template=template, run=compiled)
        return member.compiled[n]

    # -- ASE interface ------------------------------------------------------------
    def total_charge(self, atoms: Atoms) -> float:
        """Total charge of ``atoms`` in e: ``atoms.info["charge"]``, else the sum of
        the initial charges when set, else the calculator's ``charge``."""
        if "charge" in atoms.info:
            return float(atoms.info["charge"])
        if atoms.has("initial_charges"):
            return float(np.sum(atoms.get_initial_charges()))
        return float(self.parameters.charge)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last calculation, plus ``"charge"`` when the
        total charge changed (``atoms.info`` is not part of ASE's comparison)."""
        changes = list(super().check_state(atoms, tol))
        if self.atoms is not None and self.total_charge(atoms) != self.total_charge(
            self.atoms
        ):
            changes.append("charge")
        return changes

    def check_atoms(self, atoms: Atoms) -> np.ndarray:
        """The atomic numbers of ``atoms`` after checking that the model can take
        them (InputError: periodic, empty, an element never trained, coincident
        atoms)."""
        if atoms.pbc.any():
            raise InputError(
                "PhysNetCalculator: periodic boundary conditions are not supported "
                f"(atoms.pbc={atoms.pbc.tolist()}); the model is for isolated molecules"
            )
        z = atoms.get_atomic_numbers()
        if z.size == 0:
            raise InputError("PhysNetCalculator: Atoms object has no atoms")
        unknown = sorted(set(z.tolist()) - set(self._known.tolist()))
        if unknown:
            names = ", ".join(
                f"{chemical_symbols[u]} (Z={u})"
                if 0 < u < len(chemical_symbols)
                else f"Z={u}"
                for u in unknown
            )
            raise InputError(
                f"PhysNetCalculator: element(s) {names} never seen in training "
                f"of {self.checkpoint_path or 'this checkpoint'} (trained elements: "
                f"{', '.join(chemical_symbols[e] for e in self._known)})"
            )
        check_coincident_atoms(z, atoms.get_positions(), "PhysNetCalculator")
        return z

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        """Compute every implemented property of ``atoms`` into ``self.results``."""
        super().calculate(atoms, properties, system_changes)
        z = self.check_atoms(self.atoms)
        charge = self.total_charge(self.atoms)
        positions = self.atoms.get_positions()
        outs = [self._member_results(m, z, positions, charge) for m in self._members]
        self.results = {}
        if self._d3 is not None:
            energy, forces = self._d3.molecule(z, positions, "PhysNetCalculator")
            for out in outs:
                out["energy"] += energy
                out["forces"] += forces
            self.results["energy_dispersion"] = energy
            self.results["forces_dispersion"] = forces
        for key in outs[0]:
            stacked = np.stack([o[key] for o in outs])
            self.results[key] = stacked.mean(axis=0)
            if key == "energy":
                self.results["energy"] = float(self.results["energy"])
                self.results["energy_members"] = stacked
        self.results["free_energy"] = self.results["energy"]
        if len(outs) > 1:
            self.results["energy_std"] = float(self.results["energy_members"].std())
            self.results["forces_std"] = np.stack([o["forces"] for o in outs]).std(0)

    def _member_results(
        self, member: Member, z: np.ndarray, positions: np.ndarray, charge: float
    ) -> dict[str, Any]:
        """One model's energy (eV), forces (n, 3) eV/Å (and dipole, charges)."""
        n = int(z.size)
        entry = self._for_size(member, n)
        batch = dict(entry.template)
        batch["Z"] = entry.template["Z"].copy()
        batch["Z"][:n] = z
        batch["R"] = entry.template["R"].copy()
        batch["R"][:n] = positions
        batch["Qtot"] = entry.template["Qtot"].copy()
        batch["Qtot"][0] = charge
        out = entry.run(member.params, device_inputs(batch), member.scale)
        # reference energies are large: add them in float64 on the host
        reference = float(member.checkpoint.constants.reference_energies[z].sum())
        results: dict[str, Any] = {
            "energy": reference + float(np.asarray(out["energy_residual"])[0]),
            "forces": np.asarray(out["forces"], np.float64)[:n].copy(),
        }
        if "dipole" in self.implemented_properties:
            results["dipole"] = np.asarray(out["dipole"], np.float64)[0].copy()
            results["charges"] = np.asarray(out["charges"], np.float64)[:n].copy()
        return results
