"""Containers created through the agent's Docker API with a network controller: the default bridge, user
bridges with names, published ports (``-p``, ``-P``) answering on the host's loopback, stop and start, and
nothing left behind by a removal, an auto-removal or a create that fails half way.

Everything runs on real runc and nftables inside the test's own namespaces (see ``conftest.py``): the "host"
is the lab's host namespace, where the bridges, the ``inet shoal`` table and the published ports live; the
test reaches published ports at 127.0.0.1 *inside that namespace*, never on the machine's own.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.api import serve_unix
from agent.network.controller import NetworkController
from agent.network.model import IPAMPool, NetworkConfig
from agent.network.sandbox import SandboxConfig
from agent.runtime.local import LocalRuntime
from tests.integration.network.conftest import CLIENT_ADDR, Lab, http_get, requires_netns
from tests.integration.runtime import local_support as support
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import busybox_store
from tests.integration.runtime.local_support import DockerAPI, LocalEnv, remove_everything

pytestmark = [pytest.mark.root, requires_runc, requires_netns]

__all__ = ["busybox_store"]
local_env = support.local_env

HTTPD = 'mkdir -p /www && echo "$MSG" > /www/index.html && exec httpd -f -p 80 -h /www'


@dataclass
class NetApi:
    """The API client, the runtime and controller behind it, and the test's namespaces."""

    api: DockerAPI
    runtime: LocalRuntime
    ctl: NetworkController
    lab: Lab
    env: LocalEnv

    async def web(self, name: str, message: str, **body: Any) -> str:
        """A started busybox httpd container answering ``message``."""
        body.setdefault("StopTimeout", 1)
        cid = await self.api.create(name, Cmd=["sh", "-c", HTTPD], Env=[f"MSG={message}"], **body)
        reply = await self.api.post(f"/containers/{cid}/start")
        assert reply.status == 204, reply.body
        return cid

    async def inspect(self, ref: str) -> dict[str, Any]:
        reply = await self.api.get(f"/containers/{ref}/json")
        assert reply.status == 200, reply.body
        return dict(reply.json())

    async def output(self, **body: Any) -> tuple[int, str]:
        """Run a container to its end; its exit code and output."""
        cid, code = await self.api.run(**body)
        text = b"".join(data for _, data in await self.api.logs(cid)).decode()
        assert (await self.api.delete(f"/containers/{cid}")).status == 204
        return code, text

    async def snapshot(self) -> tuple[list[str], list[str], list[str]]:
        """What networking holds on the host: namespaces, veths, nftables rules."""
        return self.lab.namespaces(), veths(self.lab), await self.ctl.firewall.rules()

    def base_namespaces(self) -> list[str]:
        return sorted([self.lab.prefix + "client", self.lab.prefix + "host"])

    async def assert_gone(self, cid: str) -> None:
        """Nothing of the container's networking is left: namespace, veth, rule, port, record, files."""
        assert self.lab.namespaces() == self.base_namespaces()
        assert veths(self.lab) == ["eth0"]
        rules = await self.ctl.firewall.rules()
        assert not [rule for rule in rules if " dnat ip to " in rule], rules
        assert self.ctl.ports.held() == []
        assert cid not in self.ctl.state.sandboxes and self.ctl.state.endpoints == {}
        assert not (self.env.root / "containers" / cid).exists()


def veths(lab: Lab) -> list[str]:
    """The veth devices of the lab's host namespace (its own link to the client is ``eth0``)."""
    out = subprocess.run(
        ["ip", "-netns", Path(lab.host).name, "-o", "link", "show", "type", "veth"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip())


async def get_eventually(netns: str, host: str, port: int, timeout: float = 10.0) -> str:
    """``GET /`` from inside ``netns``, retried while the server is still starting."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await http_get(netns, host, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def net_api(local_env: LocalEnv, lab: Lab, ctl: NetworkController) -> AsyncIterator[NetApi]:
    """The local runtime served with the lab's network controller; every container removed after."""
    sock_dir = Path(tempfile.mkdtemp(prefix="shoal-api-", dir="/tmp"))
    rt = local_env.runtime()
    await rt.open()
    runner = None
    try:
        runner = await serve_unix(rt, sock_dir / "api.sock", network=ctl)
        connector = aiohttp.UnixConnector(path=str(sock_dir / "api.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            yield NetApi(DockerAPI(session), rt, ctl, lab, local_env)
    finally:
        # Removed while the API still follows removals, so sandboxes go with their containers (the
        # controller's teardown and the lab's namespace sweep catch anything a failed test left).
        await remove_everything(rt)
        if runner is not None:
            await runner.cleanup()
        await rt.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def test_default_bridge_address_and_another_container_by_ip(net_api: NetApi) -> None:
    web = await net_api.web("web", "on the bridge", Hostname="webhost")
    info = await net_api.inspect(web)
    settings = info["NetworkSettings"]
    ip = settings["IPAddress"]
    assert ip.startswith("172.17.") and settings["Gateway"] == "172.17.0.1" and settings["IPPrefixLen"] == 16
    bridge = settings["Networks"]["bridge"]
    assert bridge["IPAddress"] == ip and bridge["MacAddress"] and bridge["NetworkID"]
    assert settings["SandboxKey"].startswith("/run/netns/" + net_api.lab.prefix)
    assert info["HostConfig"]["NetworkMode"] == "bridge" and settings["Ports"] == {}
    assert info["Config"]["Hostname"] == "webhost"
    listed = (await net_api.api.get("/containers/json")).json()
    assert listed[0]["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ip

    code, text = await net_api.output(Cmd=["timeout", "5", "wget", "-q", "-O", "-", f"http://{ip}/"])
    assert (code, text) == (0, "on the bridge\n")
    # The sandbox's files are the container's /etc/hosts, /etc/hostname and /etc/resolv.conf.
    code, text = await net_api.output(
        Cmd=["sh", "-c", "cat /etc/hostname /etc/hosts; ip -4 -o addr show eth0"], Hostname="probe"
    )
    assert code == 0 and text.startswith("probe\n")
    address = text.split(" inet ")[1].split("/")[0]
    assert f"{address}\tprobe" in text and address.startswith("172.17.")


async def test_user_bridge_resolves_names_and_aliases(net_api: NetApi) -> None:
    await net_api.ctl.create_network(NetworkConfig(name="appnet", ipam=(IPAMPool(subnet="10.201.0.0/24"),)))
    db = await net_api.web(
        "db",
        "by name",
        HostConfig={"NetworkMode": "appnet"},
        NetworkingConfig={
            "EndpointsConfig": {
                "appnet": {"Aliases": ["database"], "IPAMConfig": {"IPv4Address": "10.201.0.50"}}
            }
        },
    )
    settings = (await net_api.inspect(db))["NetworkSettings"]
    entry = settings["Networks"]["appnet"]
    assert entry["IPAddress"] == "10.201.0.50" and entry["Gateway"] == "10.201.0.1"
    assert entry["Aliases"] == ["database", db[:12]]
    assert settings["IPAddress"] == ""  # the top-level fields describe the default bridge only, as Docker's
    for name in ("db", "database", "db.appnet"):
        code, text = await net_api.output(
            Cmd=["timeout", "5", "wget", "-q", "-O", "-", f"http://{name}/"],
            HostConfig={"NetworkMode": "appnet"},
        )
        assert (code, text) == (0, "by name\n"), name
    # Names are scoped by network: from the default bridge, "db" is unknown. (Its resolver is the lab's
    # client address, where nothing answers, so the query never leaves the test's namespaces.)
    code, _ = await net_api.output(
        Cmd=["timeout", "2", "wget", "-q", "-O", "-", "http://db/"], HostConfig={"Dns": [CLIENT_ADDR]}
    )
    assert code != 0


async def test_published_port_answers_on_host_loopback_across_stop_and_start(net_api: NetApi) -> None:
    lab, api = net_api.lab, net_api.api
    web = await net_api.web(
        "web", "published", HostConfig={"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}}
    )
    assert await get_eventually(lab.host, "127.0.0.1", 8080) == "published\n"
    info = await net_api.inspect(web)
    assert info["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    assert info["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    listed = (await api.get("/containers/json")).json()
    assert listed[0]["Ports"] == [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}]

    # Stopped and started again, and restarted: same namespace, same address, the port still answers.
    before = info["NetworkSettings"]
    assert (await api.post(f"/containers/{web}/stop")).status == 204
    assert (await api.post(f"/containers/{web}/start")).status == 204
    assert await get_eventually(lab.host, "127.0.0.1", 8080) == "published\n"
    assert (await api.post(f"/containers/{web}/restart", params={"t": "1"})).status == 204
    assert await get_eventually(lab.host, "127.0.0.1", 8080) == "published\n"
    after = (await net_api.inspect(web))["NetworkSettings"]
    assert (after["IPAddress"], after["SandboxKey"], after["Ports"]) == (
        before["IPAddress"],
        before["SandboxKey"],
        before["Ports"],
    )

    assert (await api.delete(f"/containers/{web}", params={"force": "1"})).status == 204
    await net_api.assert_gone(web)


async def test_publish_all_picks_a_port_that_inspect_reports(net_api: NetApi) -> None:
    web = await net_api.web(
        "web", "any port", ExposedPorts={"80/tcp": {}, "53/udp": {}}, HostConfig={"PublishAllPorts": True}
    )
    info = await net_api.inspect(web)
    ports = info["NetworkSettings"]["Ports"]
    assert set(ports) == {"80/tcp", "53/udp"}
    host_port = int(ports["80/tcp"][0]["HostPort"])
    low, high = net_api.ctl.ports.ephemeral_range()
    assert low <= host_port <= high and ports["80/tcp"][0]["HostIp"] == "0.0.0.0"
    assert info["HostConfig"]["PublishAllPorts"] is True
    assert info["Config"]["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert await get_eventually(net_api.lab.host, "127.0.0.1", host_port) == "any port\n"
    listed = (await net_api.api.get("/containers/json")).json()[0]["Ports"]
    assert {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": host_port, "Type": "tcp"} in listed


async def test_container_mode_shares_the_namespace(net_api: NetApi) -> None:
    web = await net_api.web("web", "shared")
    code, text = await net_api.output(
        Cmd=["timeout", "5", "wget", "-q", "-O", "-", "http://127.0.0.1/"],
        HostConfig={"NetworkMode": "container:web"},
    )
    assert (code, text) == (0, "shared\n")
    # The sharer's removal left the owner's namespace alone.
    assert len(net_api.lab.namespaces()) == 3
    assert (await net_api.api.delete(f"/containers/{web}", params={"force": "1"})).status == 204
    await net_api.assert_gone(web)


async def test_removal_and_auto_removal_leave_nothing(net_api: NetApi) -> None:
    api = net_api.api
    await net_api.ctl.create_network(NetworkConfig(name="appnet"))
    web = await net_api.web(
        "web", "x", HostConfig={"NetworkMode": "appnet", "PortBindings": {"80/tcp": [{"HostPort": "8081"}]}}
    )
    assert await get_eventually(net_api.lab.host, "127.0.0.1", 8081) == "x\n"
    assert len(net_api.lab.namespaces()) == 3 and len(veths(net_api.lab)) == 2
    assert (await api.delete(f"/containers/{web}", params={"force": "1"})).status == 204
    await net_api.assert_gone(web)

    # --rm: the runtime removes the container itself once it exits; its sandbox goes with it.
    cid = await api.create(Cmd=["true"], HostConfig={"AutoRemove": True, "PublishAllPorts": True},
                           ExposedPorts={"80/tcp": {}})  # fmt: skip
    assert net_api.ctl.port(cid)
    # As ``docker run --rm`` does: wait for the removal (its headers come at once, its body once the
    # removal is complete, hooks included), then start.
    url = f"http://localhost{api.prefix}/containers/{cid}/wait"
    async with api.session.post(url, params={"condition": "removed"}) as waiting:
        assert waiting.status == 200
        assert (await api.post(f"/containers/{cid}/start")).status == 204
        assert await asyncio.wait_for(waiting.json(), 20) == {"StatusCode": 0, "Error": None}
    assert (await api.get(f"/containers/{cid}/json")).status == 404
    await net_api.assert_gone(cid)


async def test_failed_creates_leave_nothing(net_api: NetApi) -> None:
    api = net_api.api
    web = await net_api.web("web", "first", HostConfig={"PortBindings": {"80/tcp": [{"HostPort": "8082"}]}})
    before = await net_api.snapshot()
    held = net_api.ctl.ports.held()

    unknown = await api.post(
        "/containers/create", json={"Image": "busybox", "HostConfig": {"NetworkMode": "nosuch"}}
    )
    assert (unknown.status, unknown.message) == (404, "network nosuch not found")
    unknown = await api.post(
        "/containers/create",
        json={"Image": "busybox", "NetworkingConfig": {"EndpointsConfig": {"nosuch": {}}}},
    )
    assert unknown.status == 404
    # The host port is taken by the first container: refused before any device exists.
    busy = await api.post(
        "/containers/create",
        params={"name": "second"},
        json={"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8082"}]}}},
    )
    assert busy.status == 409 and "port is already allocated" in busy.message
    # Refused by the runtime after the sandbox was made (a missing bind source): the sandbox is undone.
    late = await api.post(
        "/containers/create",
        params={"name": "late"},
        json={
            "Image": "busybox",
            "HostConfig": {
                "PortBindings": {"80/tcp": [{"HostPort": "8083"}]},
                "Mounts": [{"Type": "bind", "Source": "/nonexistent/shoal-test", "Target": "/x"}],
            },
        },
    )
    assert late.status == 400 and "bind source path does not exist" in late.message
    assert (await api.post("/containers/create", json={"Image": "no-such-image"})).status == 404

    assert await net_api.snapshot() == before
    assert net_api.ctl.ports.held() == held and list(net_api.ctl.state.sandboxes) == [web]
    containers = net_api.env.root / "containers"
    assert sorted(p.name for p in containers.iterdir()) == [web]
    # The names of failed creates are free again.
    second = await api.create("second", Cmd=["true"])
    assert (await api.delete(f"/containers/{second}")).status == 204


async def test_sandboxes_of_containers_removed_while_not_serving_go_when_the_api_starts(
    net_api: NetApi,
) -> None:
    cid = await net_api.api.create("web", Cmd=["true"], HostConfig={"PortBindings": {"80/tcp": [{}]}})
    assert net_api.ctl.port(cid)
    # Removed behind the API's back, as after an API that stopped while the runtime went on.
    net_api.runtime.removal_hooks.clear()
    await net_api.runtime.remove(cid)
    assert cid in net_api.ctl.state.sandboxes
    sock_dir = Path(tempfile.mkdtemp(prefix="shoal-api-", dir="/tmp"))
    runner = await serve_unix(net_api.runtime, sock_dir / "api.sock", network=net_api.ctl)
    try:
        await net_api.assert_gone(cid)
        # A task sandbox of the runc executor on the same controller is not the API's: it stays.
        await net_api.ctl.create_sandbox(
            SandboxConfig("task" + "0" * 60, "task", etc_dir=str(sock_dir / "t"))
        )
        await runner.cleanup()
        runner = await serve_unix(net_api.runtime, sock_dir / "api.sock", network=net_api.ctl)
        assert "task" + "0" * 60 in net_api.ctl.state.sandboxes
        await net_api.ctl.remove_sandbox("task")
    finally:
        await runner.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)
