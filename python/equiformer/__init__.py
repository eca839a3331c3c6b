"""Equiformer equivariant graph-attention interatomic potentials for production MD."""

__version__ = "0.1.0"
