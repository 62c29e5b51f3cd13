"""Shoal: overlay."""
