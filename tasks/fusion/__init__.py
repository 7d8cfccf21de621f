"""Fusion.

How the modalities' candidate lists become one list (candidate table, rank and score fusers,
weights, stacking, plans and their selection).
"""
