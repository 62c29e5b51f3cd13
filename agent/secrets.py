"""Secrets on a node: held in memory, and written only to a tmpfs a container sees at ``/run/secrets``.

The manager sends a node only the secrets its assigned tasks use (manager/dispatcher.py); the worker
keeps them in memory (agent/worker.py) and they are never logged (``SecretSpec.data`` has no repr).
When a task's container is prepared, the container executor calls :func:`mount_secrets` with
:func:`secret_files` of the task: a small tmpfs of its own is mounted at ``<root>/<task id>`` (mode
0700, ``nosuid,nodev,noexec``), each secret is written there as a file (mode 0444), and the directory is
then bind-mounted read-only at ``/run/secrets`` in the container (:func:`secrets_mount` gives that
mount). When the task is removed, :func:`unmount_secrets` unmounts the tmpfs and the data is gone: it
never touched a disk. (The only way to disk is swap; hosts that must exclude that run without swap or
with encrypted swap, as with Docker.)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

from agent.errors import ExecutorError
from agent.runtime.snapshots.mounts import is_mountpoint, mount, umount
from api import Secret, Task

#: Where the per-task secret filesystems are mounted on the host.
SECRETS_ROOT = Path("/run/shoal/secrets")
#: Where a container sees its secrets.
CONTAINER_DIR = "/run/secrets"
#: Docker's limit for one secret is 500 KiB; the tmpfs is sized for the task's secrets plus slack.
MAX_SECRET_BYTES = 500 * 1024
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def secret_files(task: Task, secrets: Mapping[str, Secret]) -> dict[str, bytes]:
    """File name → data of every secret ``task`` uses. The file name is the reference's ``target``
    (default: the secret's name); ``secrets`` are those the manager sent, by id. Raises ExecutorError
    when a secret is missing or a name would leave the directory."""
    files: dict[str, bytes] = {}
    for ref in task.spec.container.secrets:
        secret = secrets.get(ref.secret_id)
        if secret is None:
            raise ExecutorError(task.meta.id, f"secret {ref.secret_name or ref.secret_id} is not available")
        name = ref.target or secret.spec.annotations.name or ref.secret_name
        if not name or "/" in name or name in (".", ".."):
            raise ExecutorError(task.meta.id, f"invalid secret file name {name!r}")
        if len(secret.spec.data) > MAX_SECRET_BYTES:
            raise ExecutorError(task.meta.id, f"secret {name} is larger than {MAX_SECRET_BYTES} bytes")
        files[name] = secret.spec.data
    return files


def secrets_dir(task_id: str, root: Path = SECRETS_ROOT) -> Path:
    """The host directory of a task's secrets (a tmpfs once mounted)."""
    if not task_id or "/" in task_id or task_id in (".", ".."):
        raise ValueError(f"invalid task id {task_id!r}")
    return root / task_id


def mount_secrets(
    task_id: str,
    files: Mapping[str, bytes],
    *,
    root: Path = SECRETS_ROOT,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o444,
) -> Path:
    """Mount a tmpfs for ``task_id`` and write ``files`` into it; the host directory to bind-mount
    read-only at /run/secrets (:func:`secrets_mount`). Idempotent: an existing mount is refilled."""
    path = secrets_dir(task_id, root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)  # nobody else on the host gets to the tasks' directories
    path.mkdir(exist_ok=True, mode=0o700)
    if not is_mountpoint(path):
        size = sum(len(d) for d in files.values()) + 64 * 1024
        mount(
            "tmpfs",
            path,
            "tmpfs",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            f"size={size},mode=0700,uid={uid},gid={gid}",
            owner=task_id,
        )
    for old in path.iterdir():
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    # The container's user must be able to enter the directory; it is mounted read-only there.
    os.chown(path, uid, gid)
    os.chmod(path, 0o500 if uid else 0o755)
    return path


def unmount_secrets(task_id: str, *, root: Path = SECRETS_ROOT) -> None:
    """Unmount a task's secrets tmpfs (its data is gone with it) and remove the directory."""
    path = secrets_dir(task_id, root)
    if is_mountpoint(path):
        umount(path, owner=task_id)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise


def secrets_mount(host_dir: Path) -> dict[str, object]:
    """The runtime's mount of the secrets directory in the container: read-only at /run/secrets
    (the fields of agent.runtime.containers.config.Mount)."""
    return {
        "type": "bind",
        "source": str(host_dir),
        "target": CONTAINER_DIR,
        "host_path": str(host_dir),
        "read_only": True,
    }
