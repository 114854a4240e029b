"""Molecular dynamics with trained models: integrators, the packed system, stability."""
