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


class PhysNetCalculator(Calculator):
    """ASE calculator of energy, forces (and, with charges, dipole and charges).

    Args:
        checkpoint: path of a ``best.ckpt`` (or an already loaded
            :class:`~physpack.model.checkpoint.Checkpoint`).
        charge: total charge of the molecule in e, used by models with charges,
            when the atoms carry none (:meth:`total_charge`).
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Raises:
        InputError: the checkpoint is missing, truncated, of a newer format or not
            in eV/Å; at calculation time, an element the model was never trained
            for, periodic boundary conditions or coincident atoms.
    """

    default_parameters: ClassVar[dict[str, Any]] = {"charge": 0.0}

    def __init__(
        self, checkpoint: str | os.PathLike | Checkpoint, charge: float = 0.0, **kwargs
    ):
        super().__init__(charge=float(charge), **kwargs)
        if isinstance(checkpoint, Checkpoint):
            self.checkpoint, self.checkpoint_path = checkpoint, None
        else:
            self.checkpoint_path = Path(checkpoint)
            self.checkpoint = load_checkpoint(self.checkpoint_path)
        where = self.checkpoint_path or "checkpoint"
        for kind, unit in _ASE_UNITS.items():
            found = self.checkpoint.units.get(kind, CANONICAL_UNITS[kind])
            if found != unit:
                raise InputError(
                    f"{where}: units.{kind} is {found!r}; the calculator needs {unit!r}"
                )
        self.model = self.checkpoint.model
        self.implemented_properties: list[str] = ["energy", "free_energy", "forces"]
        if self.checkpoint.model_config.charges:
            self.implemented_properties += ["dipole", "charges"]
        self._params = jax.device_put(self.checkpoint.params)
        self._scale = jnp.float32(self.checkpoint.constants.scale)
        self._known = np.asarray(self.checkpoint.constants.elements, np.int64)
        self._compiled: dict[int, _Compiled] = {}

    # -- compilation ------------------------------------------------------------
    @property
    def compiled_sizes(self) -> tuple[int, ...]:
        """Atom counts for which the model has been compiled, in order."""
        return tuple(self._compiled)

    def _for_size(self, n: int) -> _Compiled:
        """The template batch and compiled function for molecules of ``n`` atoms."""
        if n not in self._compiled:
            template = molecules_to_batch(
                [{"Z": np.ones(n, np.int32), "R": np.zeros((n, 3), np.float32)}]
            )
            inputs = device_inputs(template)
            model = self.model

            def run(
                params: Any, inputs: dict[str, jax.Array], scale: jax.Array
            ) -> dict[str, jax.Array]:
                return energy_and_forces(params, model, inputs, scale)

            compiled = jax.jit(run).lower(self._params, inputs, self._scale).compile()
            self._compiled[n] = _Compiled(template=template, run=compiled)
        return self._compiled[n]

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

    def _check(self, atoms: Atoms) -> np.ndarray:
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
        z = self._check(self.atoms)
        n = int(z.size)
        entry = self._for_size(n)
        batch = dict(entry.template)
        batch["Z"] = entry.template["Z"].copy()
        batch["Z"][:n] = z
        batch["R"] = entry.template["R"].copy()
        batch["R"][:n] = self.atoms.get_positions()
        charge = self.total_charge(self.atoms)
        batch["Qtot"] = entry.template["Qtot"].copy()
        batch["Qtot"][0] = charge
        out = entry.run(self._params, device_inputs(batch), self._scale)
        # reference energies are large: add them in float64 on the host
        reference = float(self.checkpoint.constants.reference_energies[z].sum())
        energy = reference + float(np.asarray(out["energy_residual"])[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(out["forces"], np.float64)[:n].copy(),
        }
        if "dipole" in out:
            self.results["dipole"] = np.asarray(out["dipole"], np.float64)[0].copy()
            self.results["charges"] = np.asarray(out["charges"], np.float64)[:n].copy()
