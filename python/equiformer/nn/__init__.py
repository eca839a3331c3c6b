"""Equiformer building blocks, one module per block of the paper."""
