"""Embedded DNS and attach time: queries/s and p50/p99 latency, and the time to attach a container.

    python -m bench.dns [--names 1000] [--duration 3] [--concurrency 4] [--attach 20]

Needs root. Builds everything in namespaces of its own (removed at the end): a "host" namespace with a
user-defined bridge network, a container sandbox holding the load generator, and ``--names`` registered
container names. The load generator runs as a separate process inside the container's namespace (so it
does not share the server's event loop) and keeps ``--concurrency`` UDP queries in flight to
``127.0.0.11:53`` for ``--duration`` seconds, first for known names, then for unknown names (forwarded to
an upstream on loopback that answers NXDOMAIN). Four queries in flight already saturate the server (one
process, one event loop); more only add queueing to the latency. Attach time is the median time of
``network connect`` of a running container to a bridge network, and of creating a container's whole
sandbox (namespace, veth, addresses, rules, DNS). Goals: >= 10,000 queries/s and p99 <= 2 ms for known
names; attach <= 20 ms. A readable table comes first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnslib import RCODE, DNSRecord

GOAL_QPS = 10_000
GOAL_P99_MS = 2.0
GOAL_ATTACH_MS = 20.0


def generate(names: list[str], duration: float, concurrency: int, server: tuple[str, int]) -> dict[str, Any]:
    """Keep ``concurrency`` queries in flight for ``duration`` seconds; latencies and answer codes."""
    sel = selectors.DefaultSelector()
    socks = []
    sent: dict[socket.socket, float] = {}
    latencies: list[float] = []
    rcodes: dict[int, int] = {}
    packets = [DNSRecord.question(name).pack() for name in names]

    def send(sock: socket.socket) -> None:
        sock.send(random.choice(packets))
        sent[sock] = time.perf_counter()

    for _ in range(concurrency):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(server)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        socks.append(sock)
        send(sock)
    by_fd = {sock.fileno(): sock for sock in socks}
    start = time.perf_counter()
    end = start + duration
    lost = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        events = sel.select(timeout=0.5)
        if not events:
            # A lost datagram: count it and put the sockets back to work.
            lost += len(socks)
            for sock in socks:
                send(sock)
            continue
        for key, _ in events:
            ready = by_fd[key.fd]
            data = ready.recv(4096)
            latencies.append(time.perf_counter() - sent[ready])
            rcode = data[3] & 0x0F if len(data) > 3 else -1
            rcodes[rcode] = rcodes.get(rcode, 0) + 1
            send(ready)
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.close()
    latencies.sort()
    return {
        "queries": len(latencies),
        "qps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None,
        "rcodes": {RCODE.get(k, str(k)): v for k, v in rcodes.items()},
        "lost": lost,
    }


class _NXDomain(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = DNSRecord.parse(data).reply(aa=0)
        reply.header.rcode = RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)


async def _run_generator(netns: str, names: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    names_file = tmp / f"names-{secrets.token_hex(3)}.json"
    names_file.write_text(json.dumps(names))
    argv = [
        "nsenter",
        f"--net={netns}",
        "--",
        sys.executable,
        "-m",
        "bench.dns",
        "--generate",
        str(names_file),
    ]
    argv += ["--duration", str(args.duration), "--concurrency", str(args.concurrency)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parent.parent)
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed with exit {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Build the namespaces, run both loads and the attach timings, tear everything down."""
    from agent.network import netlink, nsutil
    from agent.network.controller import ControllerConfig, NetworkController
    from agent.network.model import NetworkConfig
    from agent.network.sandbox import SandboxConfig

    prefix = f"bd{secrets.token_hex(3)}-"
    loop = asyncio.get_running_loop()
    upstream, _ = await loop.create_datagram_endpoint(_NXDomain, local_addr=("127.0.0.1", 0))
    host = nsutil.create_netns(prefix + "host")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = ControllerConfig(
            state_dir=tmp / "state",
            host_netns=host,
            sandbox_prefix=prefix,
            dns_upstreams=(f"127.0.0.1:{upstream.get_extra_info('sockname')[1]}",),
        )
        ctl = NetworkController(config)
        try:
            await netlink.loopback_up(host)
            await ctl.start()
            net = await ctl.create_network(NetworkConfig(name="bench"))
            await ctl.create_network(NetworkConfig(name="other"))
            client = await ctl.create_sandbox(
                SandboxConfig(secrets.token_hex(32), "loadgen", network_mode="bench")
            )
            names = [f"svc-{i}" for i in range(args.names)]
            for i, name in enumerate(names):
                ctl.dns.table.set_records(
                    net.id, f"bench-{i}", [name], [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"]
                )
            known = await _run_generator(client.netns, names, args, tmp)
            unknown = await _run_generator(client.netns, [f"nope-{i}.invalid" for i in range(100)], args, tmp)

            create_ms, connect_ms = [], []
            for i in range(args.attach):
                t0 = time.perf_counter()
                await ctl.create_sandbox(SandboxConfig(secrets.token_hex(32), f"c{i}", network_mode="bench"))
                t1 = time.perf_counter()
                await ctl.connect(f"c{i}", "other")
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1000)
                connect_ms.append((t2 - t1) * 1000)
        finally:
            try:
                await ctl.teardown()
                await ctl.dns.close()
            finally:
                upstream.close()
                for name in os.listdir(nsutil.NETNS_RUN_DIR):
                    if name.startswith(prefix):
                        nsutil.remove_netns(name)
    attach = statistics.median(connect_ms)
    return {
        "bench": "dns",
        "names": args.names,
        "concurrency": args.concurrency,
        "known": known,
        "nxdomain": unknown,
        "attach_ms_median": attach,
        "create_sandbox_ms_median": statistics.median(create_ms),
        "goal_qps": GOAL_QPS,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_attach_ms": GOAL_ATTACH_MS,
        "ok": bool(
            known["qps"] >= GOAL_QPS and (known["p99_ms"] or 1e9) <= GOAL_P99_MS and attach <= GOAL_ATTACH_MS
        ),
    }


def main() -> None:
    """Command line entry point (also the load generator, with ``--generate``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--attach", type=int, default=20)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        names = json.loads(Path(args.generate).read_text())
        print(json.dumps(generate(names, args.duration, args.concurrency, ("127.0.0.11", 53))))
        return
    if os.geteuid() != 0:
        sys.exit("bench.dns needs root (network namespaces)")
    result = asyncio.run(bench(args))
    for label in ("known", "nxdomain"):
        r = result[label]
        latency = f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
        print(f"{label:>9}: {r['qps']:9.0f} q/s  {latency}  {r['rcodes']}")
    print(f"   attach: {result['attach_ms_median']:.1f} ms (network connect), whole sandbox "
          f"{result['create_sandbox_ms_median']:.1f} ms")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
