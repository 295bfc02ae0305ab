"""Helpers shared by tests in several folders (importable as ``support``: tests/ is on sys.path)."""
