"""Evaluation.

Ranking metrics, scoring lists per segment, the evaluation protocol key, the alarm, and scoring
published lists offline.
"""
