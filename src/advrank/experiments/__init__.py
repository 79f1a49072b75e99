"""Experiments: the §4 protocol, the grid, curves, transfer, universal perturbations and the
demo, all writing through one store (``store.py``: identity, lock, atomic cells, resume)."""
