"""Shoal: agent."""
