"""The archive format and reading it: records, segments, the layout on storage, checkpoints, definitions, readers.

docs/FORMAT.md is the specification; this package is its reference implementation.
"""
