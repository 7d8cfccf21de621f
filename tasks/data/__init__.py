"""Data.

The snapshot read from the warehouse, the integer-coded Dataset, hold-out splits and user
segments.
"""
