"""The agent's local runtime: images, snapshots, containers."""
