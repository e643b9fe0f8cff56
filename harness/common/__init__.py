"""Shared utilities of every harness stage, torch-free: one-line user errors, atomic file
writes and the cache folder, provenance and the code version."""
