"""``/_ping``, ``/version``, ``/info``: what Docker's clients ask first (version negotiation, host facts)."""

from __future__ import annotations

import os
import platform
import socket

from aiohttp import web

from agent.api.common import API_VERSION, MIN_API_VERSION, json_response, runtime_of
from agent.api.shapes import host_memory
from agent.runtime.containers import cgroups

VERSION = "0.1.0"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _arch() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return platform.system()


async def ping(request: web.Request) -> web.Response:
    """``GET|HEAD /_ping``: ``OK``; the headers carry the API version clients negotiate with."""
    headers = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Type": "text/plain; charset=utf-8"})
    return web.Response(text="OK", headers=headers)


async def version(request: web.Request) -> web.Response:
    """``GET /version``."""
    return json_response(
        {
            "Platform": {"Name": "Shoal"},
            "Components": [{"Name": "Engine", "Version": VERSION, "Details": {"ApiVersion": API_VERSION}}],
            "Version": VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": _arch(),
            "KernelVersion": platform.release(),
            "BuildTime": "",
        }
    )


async def info(request: web.Request) -> web.Response:
    """``GET /info``: counts of containers and images, storage driver, cgroups, host."""
    rt = runtime_of(request)
    records = rt.containers.list(all=True)
    counts = {s: sum(1 for r in records if r.state.status == s) for s in ("running", "paused")}
    return json_response(
        {
            "ID": socket.gethostname(),
            "Name": socket.gethostname(),
            "Containers": len(records),
            "ContainersRunning": counts["running"],
            "ContainersPaused": counts["paused"],
            "ContainersStopped": len(records) - counts["running"] - counts["paused"],
            "Images": len(rt.images.images()),
            "Driver": rt.snapshots.driver,
            "DriverStatus": [],
            "DockerRootDir": str(rt.root),
            "MemoryLimit": True,
            "SwapLimit": True,
            "CpuCfsPeriod": True,
            "CpuCfsQuota": True,
            "PidsLimit": True,
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": "2" if cgroups.is_v2() else "1",
            "KernelVersion": platform.release(),
            "OperatingSystem": _os_name(),
            "OSType": "linux",
            "Architecture": platform.machine(),
            "NCPU": os.cpu_count() or 1,
            "MemTotal": host_memory(),
            "ServerVersion": VERSION,
            "Runtimes": {"runc": {"path": rt.containers.runc.binary}},
            "DefaultRuntime": "runc",
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"],
            "Labels": [],
            "Warnings": None,
        }
    )


ROUTES = [
    ("GET", "/_ping", ping),
    ("HEAD", "/_ping", ping),
    ("GET", "/version", version),
    ("GET", "/info", info),
]
