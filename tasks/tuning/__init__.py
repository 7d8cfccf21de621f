"""Tuning.

The Optuna search over each modality's hyperparameters and its results in the warehouse.
"""
