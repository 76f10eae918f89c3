"""The archive: records, segments, the layout on storage, the rolling writer and the readers.

docs/FORMAT.md is the specification; this package is its reference implementation.
"""
