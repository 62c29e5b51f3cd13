"""Shoal: manager."""
