"""Volumes: named and anonymous ``local`` volumes, bind mounts and ``volumes-from``.

:class:`~agent.runtime.volumes.store.VolumeStore` keeps the volumes; :mod:`.spec` parses Docker's mount
syntaxes and plans a container's mounts; :class:`~agent.runtime.local.LocalRuntime` ties them to containers
(copy-on-first-mount, ``rm -v``, removal refused while in use).
"""

from agent.runtime.volumes.spec import MountRequest, parse_bind, parse_volumes_from, plan_mounts
from agent.runtime.volumes.store import ANONYMOUS_LABEL, Volume, VolumeStore, copy_image_content

__all__ = [
    "ANONYMOUS_LABEL",
    "MountRequest",
    "Volume",
    "VolumeStore",
    "copy_image_content",
    "parse_bind",
    "parse_volumes_from",
    "plan_mounts",
]
