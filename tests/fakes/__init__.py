"""Test doubles for external programs (the `bd` stand-in)."""
