"""The model: PhysNet, its checkpoint file and the ASE calculator."""
