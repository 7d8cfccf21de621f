"""Outputs.

What is published beside the lists (reasons, data checks, reports, Data Docs).
"""
