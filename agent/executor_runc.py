"""``--executor runc``: tasks as containers of the host's local runtime (agent/runtime/).

Each task becomes one container named as Docker names swarm tasks (``<service>.<slot>.<task id>``) and
labelled with the task's identity (``com.docker.swarm.task.id`` …), which is how the executor finds the
containers it made — after an agent restart too — and never touches anyone else's. A service's
``ContainerSpec.command`` replaces the image's ENTRYPOINT and ``args`` its CMD, as in Docker.

Images missing on the host are pulled from their registry during *prepare*; a pull that fails rejects the
task (the controller reports it), which is what Docker does for an unknown image.

With a network controller (agent/network/) a task gets a network sandbox before its container is created:
its cluster networks (overlays, with the addresses the manager allocated) in the order its spec lists them,
or the default bridge when it has none; the container joins that namespace and gets the sandbox's
``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``. Without one, containers have only loopback.
As Docker releases a container's networking when it stops, the sandbox goes as soon as the container has
stopped (it exited, or was shut down), not when the task is removed: an ended task, which the managers
may keep in the service's history for long, holds no address on an overlay's bridge, and the last task of
a network on the host to end takes the network's namespace with it.
Ports the service publishes in host mode are published on this host (``-p published:target``, on the
default bridge, or through the gateway bridge for a task on overlays); those in ingress mode are the
routing mesh's (overlay/ingress.py) and need nothing here.

A task's secrets are written to a tmpfs of its own and bind-mounted read-only at ``/run/secrets``
(agent/secrets.py), never to the disk; removing the task unmounts them.

Health checks (the spec's, or the image's ``HEALTHCHECK``) run in the container through ``runc exec``
(agent/health_runc.py); the task controller schedules them. Logs are the container's: what conmon wrote
to its CRI log file, every run of it, stdout and stderr apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from agent.errors import ExecutorError, TaskNotFound
from agent.executor import ExitStatus, TaskDependencies, host_description
from agent.health import CheckOutput, effective_config
from agent.health_runc import exec_check, image_healthcheck
from agent.network.controller import ControllerConfig, NetworkController
from agent.network.errors import NetworkError
from agent.network.sandbox import SandboxConfig
from agent.runtime.containers.config import ContainerConfig, Resources
from agent.runtime.containers.logs import LogEntry, LogFilter
from agent.runtime.errors import ContainerNotFound, ContainerRuntimeError, ImageNotFound
from agent.runtime.local import LocalRuntime, LocalRuntimeOptions
from agent.runtime.volumes.spec import MountRequest
from agent.secrets import CONTAINER_DIR, mount_secrets, secret_files, unmount_secrets
from api import Network, Task
from api.logs import LogLine, LogOptions
from api.objects import SECOND, HealthConfig, MountType, NodeDescription, PortProtocol, PublishMode
from api.peers import Peers
from overlay.cluster import ensure_network, task_attachments
from overlay.dns import EmbeddedDNS
from overlay.driver import OverlayConfig, OverlayDriver
from scheduler.from_api import task_container_name

log = logging.getLogger("shoal.agent.executor")

LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"


class RuncExecutor:
    """Runs tasks as containers under runc; see the module docstring."""

    name = "runc"

    def __init__(
        self,
        root: Path | str,
        *,
        hostname: str = "",
        labels: Mapping[str, str] | None = None,
        options: LocalRuntimeOptions | None = None,
        node_id: str = "",
        network: NetworkController | None = None,
        network_dir: Path | str | None = None,
        advertise_addr: str = "",
        netns_prefix: str = "shoal-",
    ) -> None:
        self.runtime = LocalRuntime(root, options)
        #: The host's network controller: given (tests), or made on first use from ``network_dir``.
        self.network = network
        self._network_dir = Path(network_dir) if network_dir is not None else None
        self._advertise_addr = advertise_addr
        self._netns_prefix = netns_prefix
        self.overlay: OverlayDriver | None = None
        self._networks_lock = asyncio.Lock()
        self.hostname = hostname
        self.labels = dict(labels or {})
        self.node_id = node_id
        self._opened = False

    async def _open(self) -> LocalRuntime:
        if not self._opened:
            await self.runtime.open()
            if self.network is None and self._network_dir is not None:
                await self._open_network(self._network_dir)
            self._opened = True
        return self.runtime

    async def _open_network(self, state_dir: Path) -> None:
        """The host's networking: bridges, ports and DNS, plus overlays when the node has a cluster address.
        Drivers are registered before the controller starts, so it restores their networks too."""
        ctl = NetworkController(
            ControllerConfig(state_dir=state_dir, sandbox_prefix=self._netns_prefix), EmbeddedDNS()
        )
        if self._advertise_addr:
            self.overlay = OverlayDriver.install(
                ctl,
                OverlayConfig(advertise_addr=self._advertise_addr, netns_prefix=f"{self._netns_prefix}ov-"),
            )
        await ctl.start()
        self.network = ctl

    def apply_peers(self, frame: Peers) -> None:
        """The manager's view of every endpoint on this node's networks (the session hands it over)."""
        if self.overlay is not None:
            self.overlay.apply_peers(frame)

    async def describe(self) -> NodeDescription:
        runtime = await self._open()
        desc = host_description(self.hostname, self.labels)
        return replace(desc, storage_driver=getattr(runtime.snapshots, "driver", "") or "overlay")

    def _container_of(self, task_id: str) -> str | None:
        for record in self.runtime.list_containers(
            all=True, filters={"label": [f"{LABEL_TASK_ID}={task_id}"]}
        ):
            return record.id
        return None

    async def list_tasks(self) -> set[str]:
        runtime = await self._open()
        ids = set()
        for record in runtime.list_containers(all=True, filters={"label": [LABEL_TASK_ID]}):
            task_id = record.config.labels.get(LABEL_TASK_ID)
            if task_id:
                ids.add(task_id)
        return ids

    async def prepare(self, task: Task, deps: TaskDependencies) -> None:
        runtime = await self._open()
        if self._container_of(task.meta.id) is not None:
            return  # prepared before (an agent restart, or a retried step)
        spec = task.spec.container
        try:
            runtime.image(spec.image)
        except ImageNotFound:
            log.info("pulling %s for task %s", spec.image, task.meta.id)
            try:
                await runtime.pull(spec.image)
            except ContainerRuntimeError as e:
                raise ExecutorError(task.meta.id, f"No such image: {spec.image} ({e})") from None
        config = self._config(task)
        mounts = [
            MountRequest(type=m.type.value, target=m.target, source=m.source, read_only=m.read_only)
            for m in spec.mounts
            if m.type is not MountType.TMPFS
        ]
        files = secret_files(task, deps.secrets)
        try:
            if files:
                path = mount_secrets(task.meta.id, files)
                mounts.append(
                    MountRequest(type="bind", target=CONTAINER_DIR, source=str(path), read_only=True)
                )
            if self.network is not None:
                mode, etc_dir = await self._sandbox(task, deps.networks)
                config = replace(config, network_mode=mode, etc_dir=str(etc_dir))
            await runtime.create(config, task_container_name(task), mounts=mounts)
        except (ContainerRuntimeError, NetworkError) as e:
            await self._drop_sandbox(task.meta.id)
            _drop_secrets(task.meta.id)
            raise ExecutorError(task.meta.id, str(e)) from None

    async def _sandbox(self, task: Task, networks: Mapping[str, Network]) -> tuple[str, Path]:
        """The task's network namespace, joined to its networks: its runtime mode, and the directory of its
        ``/etc`` files (``hosts``, ``hostname``, ``resolv.conf``), which the controller writes and keeps up
        to date and the runtime binds over the image's own."""
        assert self.network is not None
        ctl = self.network
        attachments = task_attachments(task)
        for att in attachments:
            net = networks.get(att.network_id)
            if net is None:
                raise ExecutorError(task.meta.id, f"network {att.network_id} was not sent with the task")
            # Tasks are prepared concurrently: the first one on a network creates it here, the others wait.
            async with self._networks_lock:
                await ensure_network(ctl, net)
        etc_dir = self.runtime.root / "netetc" / task.meta.id
        first = attachments[0] if attachments else None
        sandbox = await ctl.create_sandbox(
            SandboxConfig(
                container_id=task.meta.id,
                name=task_container_name(task),
                network_mode=first.network_id if first else "bridge",
                hostname=task.spec.container.hostname or task.meta.id[:12],
                ip=first.ip if first else "",
                etc_dir=str(etc_dir),
                publish=host_ports(task),
            )
        )
        for att in attachments[1:]:
            await ctl.connect(task.meta.id, att.network_id, ip=att.ip)
        return sandbox.runtime_mode, etc_dir

    async def _release_network(self, task_id: str) -> None:
        """The task's container has stopped: its sandbox goes (see the module docstring). Shielded, since
        the controller cancels a pending ``wait`` when something else happens at the same moment, and a
        sandbox half removed would leave its veth on the network's bridge."""
        await asyncio.shield(self._drop_sandbox(task_id))

    async def _drop_sandbox(self, task_id: str) -> None:
        if self.network is None:
            return
        with contextlib.suppress(NetworkError):
            await self.network.remove_sandbox(task_id)
        shutil.rmtree(self.runtime.root / "netetc" / task_id, ignore_errors=True)

    def _config(self, task: Task) -> ContainerConfig:
        c = task.spec.container
        limits = task.spec.resources.limits
        labels = {
            **c.labels,
            LABEL_TASK_ID: task.meta.id,
            LABEL_TASK_NAME: task_container_name(task),
            LABEL_SERVICE_ID: task.service_id,
            LABEL_SERVICE_NAME: task.service_annotations.name,
            LABEL_NODE_ID: task.node_id or self.node_id,
        }
        return ContainerConfig(
            image=c.image,
            entrypoint=tuple(c.command) if c.command else None,
            cmd=tuple(c.args) if c.args else None,
            env=tuple(c.env),
            working_dir=c.dir or None,
            user=c.user or None,
            hostname=c.hostname or task.meta.id[:12],
            labels=labels,
            stop_signal=c.stop_signal or None,
            stop_timeout=max(1, c.stop_grace_period_ns // SECOND),
            init=c.init,
            read_only=c.read_only,
            tmpfs={m.target: "" for m in c.mounts if m.type is MountType.TMPFS},
            resources=Resources(memory=limits.memory_bytes, nano_cpus=limits.nano_cpus),
        )

    def _require(self, task_id: str) -> str:
        cid = self._container_of(task_id)
        if cid is None:
            raise TaskNotFound(task_id)
        return cid

    async def start(self, task: Task) -> None:
        runtime = await self._open()
        try:
            record = await runtime.containers.start(self._require(task.meta.id))
        except ContainerRuntimeError as e:
            raise ExecutorError(task.meta.id, str(e)) from None
        if record.state.error:
            raise ExecutorError(task.meta.id, record.state.error)

    async def wait(self, task: Task) -> ExitStatus:
        runtime = await self._open()
        cid = self._require(task.meta.id)
        try:
            code = await runtime.wait(cid)
        except ContainerNotFound:
            raise TaskNotFound(task.meta.id) from None
        await self._release_network(task.meta.id)
        record = runtime.containers.inspect(cid)
        message = "OOM killed" if record.state.oom_killed else f"exit code {code}"
        return ExitStatus(exit_code=code, message=message)

    async def shutdown(self, task: Task) -> None:
        runtime = await self._open()
        cid = self._container_of(task.meta.id)
        if cid is None:
            return
        timeout = max(1, task.spec.container.stop_grace_period_ns // SECOND)
        try:
            await runtime.containers.stop(cid, timeout=timeout)
        except ContainerNotFound:
            return
        except ContainerRuntimeError as e:
            raise ExecutorError(task.meta.id, str(e)) from None
        await self._release_network(task.meta.id)

    async def remove(self, task_id: str) -> None:
        runtime = await self._open()
        cid = self._container_of(task_id)
        if cid is None:
            await self._drop_sandbox(task_id)
            _drop_secrets(task_id)
            return
        try:
            await runtime.remove(cid, force=True, volumes=True)
        except ContainerNotFound:
            pass
        except ContainerRuntimeError as e:
            raise ExecutorError(task_id, str(e)) from None
        await self._drop_sandbox(task_id)
        _drop_secrets(task_id)

    async def healthcheck(self, task: Task) -> HealthConfig | None:
        runtime = await self._open()
        image = task.spec.container.image
        with contextlib.suppress(ContainerRuntimeError, TaskNotFound):
            # The image the container was made from, even if the name has moved to another since.
            image = runtime.containers.inspect(self._require(task.meta.id)).config.image_id or image
        return effective_config(task.spec.container.healthcheck, image_healthcheck(runtime, image))

    async def exec_check(self, task: Task, command: Sequence[str]) -> CheckOutput:
        runtime = await self._open()
        try:
            return await exec_check(runtime, self._require(task.meta.id), command)
        except ContainerRuntimeError as e:
            raise ExecutorError(task.meta.id, str(e)) from None

    async def logs(self, task: Task, options: LogOptions) -> AsyncIterator[LogLine]:
        runtime = await self._open()
        cid = self._container_of(task.meta.id)
        if cid is None:
            return  # not created (yet), or removed: nothing was written
        wanted = LogFilter(
            stdout=options.stdout,
            stderr=options.stderr,
            since_ns=options.since_ns,
            tail=options.tail if options.tail >= 0 else None,
        )
        try:
            if options.follow:
                async for entry in runtime.containers.follow(cid, wanted):
                    yield _log_line(entry)
            else:
                # A whole log file may be large: read it off the event loop.
                for entry in await asyncio.to_thread(runtime.containers.logs, cid, wanted):
                    yield _log_line(entry)
        except ContainerNotFound:
            return  # removed while being read

    async def close(self) -> None:
        if self._opened:
            if self._network_dir is not None and self.network is not None:
                # Made here, so closed here; containers and their networks stay for the next agent.
                if self.overlay is not None:
                    await self.overlay.close()
                await self.network.close()
                await self.network.dns.close()
                self.network = None
                self.overlay = None
            await self.runtime.close()
            self._opened = False


def _log_line(entry: LogEntry) -> LogLine:
    text = entry.message.decode(errors="replace")
    return LogLine(entry.stream, entry.time_ns, text[:-1] if text.endswith("\n") else text)


def host_ports(task: Task) -> tuple[str, ...]:
    """The task's ports published in host mode, as ``-p`` specifications (no number: any free port)."""
    out = []
    for port in task.endpoint.ports:
        if port.publish_mode is not PublishMode.HOST or port.protocol is PortProtocol.SCTP:
            continue
        published = f"{port.published_port}:" if port.published_port else ""
        out.append(f"{published}{port.target_port}/{port.protocol.value}")
    return tuple(out)


def _drop_secrets(task_id: str) -> None:
    try:
        unmount_secrets(task_id)
    except (OSError, ContainerRuntimeError) as e:
        log.warning("could not unmount the secrets of task %s: %s", task_id, e)
