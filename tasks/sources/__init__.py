"""Sources.

Reading the user's files in the data contract into raw.* (files, contract, ingest), the format
adapters, and the demo generator.
"""
