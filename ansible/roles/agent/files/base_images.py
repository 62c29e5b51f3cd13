"""Puts Shoal's base images into an agent's image store, with no registry. Run by the agent role on the
host, with the Python of Shoal's virtualenv:

    base_images.py STORE NAME... [--check]

NAME is ``busybox`` (made from the host's busybox-static) or ``debian`` (bookworm minbase by debootstrap);
agent/runtime/images/baseimages.py makes them. An image already in the store is left alone, so a second
run changes nothing. Prints one JSON object, ``{"changed": BOOL, "made": [NAME, ...]}``; with ``--check``
nothing is written and ``made`` names the images a real run would make.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from agent.runtime.errors import ContainerRuntimeError
from agent.runtime.images.baseimages import BUSYBOX_REF, DEBIAN_REF, make_busybox, make_debian
from agent.runtime.images.image import Image
from agent.runtime.images.store import ImageStore

IMAGES: dict[str, tuple[str, Callable[[ImageStore], Image]]] = {
    "busybox": (BUSYBOX_REF, make_busybox),
    "debian": (DEBIAN_REF, make_debian),
}


def missing(store_dir: Path, names: list[str]) -> list[str]:
    """The names whose image is not in the store, without writing to it (ImageStore() lays a store out)."""
    if not (store_dir / "index.json").exists():
        return list(names)
    store = ImageStore(store_dir)
    return [name for name in names if not store.exists(IMAGES[name][0])]


def main() -> None:
    """Command-line entry point."""
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) < 2 or any(name not in IMAGES for name in args[1:]):
        raise SystemExit(f"usage: {sys.argv[0]} STORE {{{'|'.join(IMAGES)}}}... [--check]")
    store_dir, names = Path(args[0]), list(dict.fromkeys(args[1:]))
    todo = missing(store_dir, names)
    if todo and not check:
        store = ImageStore(store_dir)
        for name in todo:
            try:
                IMAGES[name][1](store)
            except (ContainerRuntimeError, OSError) as e:
                raise SystemExit(f"making the {name} image failed: {e}") from None
    print(json.dumps({"changed": bool(todo), "made": todo}))


if __name__ == "__main__":
    main()
