"""Training: reference energies, losses, optimiser, steps, loop and data parallelism."""
