"""Containers on one host: runc under conmon, with Docker's defaults, exit codes and restart policies.

The entry point is :class:`agent.runtime.containers.runtime.ContainerRuntime`.
"""
