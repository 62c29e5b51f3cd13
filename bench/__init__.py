"""Shoal: bench."""
