"""Kernels.

The compiled and vectorised inner loops (top-N selection, block scoring, sparse products, the
ALS solver).
"""
