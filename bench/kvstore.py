"""KV adapter overhead: puts/s, gets/s and compare-and-swap txns/s through each adapter and through the raw
client library it wraps, in the same run, with the same number of operations and the same concurrency.

    python -m bench.kvstore [--ops 3000] [--concurrency 16] [--backends etcd,zookeeper] [--rounds 5]

It starts its own etcd and ZooKeeper on free loopback ports in temporary directories (tests/servers.py) and
stops them (by PID) at the end. For each backend and operation it runs ``--rounds`` pairs of adapter and raw
runs back to back (alternating which goes first); the ratio is the median of the pairs' ratios, so load from
elsewhere on the machine, which both runs of a pair share, does not decide it. Rates shown are each side's
best run. The goal is adapter/raw >= 0.8 for every operation. A readable table comes first; the last line
is one JSON object.

Equivalent operations: etcd — Put, linearizable Range of one key, Txn(mod_revision == r → Put) through
``aetcd.Client``. ZooKeeper — ``set``, ``get``, and a multi-op ``check(version) + set`` through kazoo's async
API, bridged to asyncio the way the adapter does it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore_adapters import Compare, Put, open_store

GOAL = 0.8
OPERATIONS = ("put", "get", "txn")
VALUE = b"v" * 100
KEYSPACE = 256

#: One operation: (worker number, operation number) → awaitable.
Op = Callable[[int, int], Awaitable[Any]]


@dataclass
class Side:
    """The three operations of one side (adapter or raw) of a backend, plus setup and teardown."""

    put: Op
    get: Op
    txn: Op
    close: Callable[[], Awaitable[None]]


@dataclass
class Result:
    backend: str
    #: side ("adapter" | "raw") -> operation -> best ops/s over the rounds
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    #: operation -> adapter/raw of each round (the two runs of a round follow each other)
    paired: dict[str, list[float]] = field(default_factory=dict)
    #: side -> operation -> least CPU time of this process per operation (µs): client cost, which the
    #: load of the machine disturbs far less than throughput
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)

    def ratio(self, op: str) -> float:
        """The median of the rounds' ratios: runs side by side in time see the same machine load."""
        return statistics.median(self.paired[op])


async def measure(op: Op, ops: int, concurrency: int) -> tuple[float, float]:
    """Operations per second of ``ops`` calls of ``op`` spread over ``concurrency`` coroutines, and the CPU
    time (µs) this process spent per operation (every thread: gRPC's and kazoo's included)."""
    numbers: Iterator[int] = iter(range(ops))

    async def worker(w: int) -> None:
        for i in numbers:  # one shared iterator: the workers split the operations between them
            await op(w, i)

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    return ops / elapsed, (time.process_time() - cpu) / ops * 1e6


# --- through the adapters (the same KVStore calls for every backend) --------------------------------------


async def adapter_side(url: str, concurrency: int) -> Side:
    store = await open_store(url)
    keys = [f"bench/k{i}" for i in range(KEYSPACE)]
    revs = [await store.put(f"bench/cas{w}", VALUE) for w in range(concurrency)]

    async def txn(w: int, i: int) -> None:
        result = await store.txn([Compare.at(f"bench/cas{w}", revs[w])], [Put(f"bench/cas{w}", VALUE)])
        if not result.succeeded:
            raise RuntimeError(f"{store.backend} adapter: compare-and-swap lost to nobody")
        revs[w] = result.revision

    return Side(
        put=lambda w, i: store.put(keys[i % KEYSPACE], VALUE),
        get=lambda w, i: store.get(keys[i % KEYSPACE]),
        txn=txn,
        close=store.close,
    )


# --- raw etcd --------------------------------------------------------------------------------------------


async def etcd_raw(host: str, port: int, prefix: str, concurrency: int) -> Side:
    import aetcd

    client = aetcd.Client(host=host, port=port)
    await client.connect()
    root = f"/{prefix}/rawbench/"  # apart from the adapter's keys, so each side owns its CAS keys
    keys = [f"{root}k{i}".encode() for i in range(KEYSPACE)]
    cas = [f"{root}cas{w}".encode() for w in range(concurrency)]
    revs = [(await client.put(k, VALUE)).header.revision for k in cas]
    tx = client.transactions

    async def txn(w: int, i: int) -> None:
        ok, responses = await client.transaction(
            compare=[tx.mod(cas[w]) == revs[w]], success=[tx.put(cas[w], VALUE)], failure=[]
        )
        if not ok:
            raise RuntimeError("raw aetcd: compare-and-swap lost to nobody")
        revs[w] = responses[0].response_put.header.revision

    return Side(
        put=lambda w, i: client.put(keys[i % KEYSPACE], VALUE),
        get=lambda w, i: client.get(keys[i % KEYSPACE]),
        txn=txn,
        close=client.close,
    )


# --- raw ZooKeeper ----------------------------------------------------------------------------------------


async def zk_raw(endpoint: str, prefix: str, concurrency: int) -> Side:
    from kazoo.client import KazooClient

    loop = asyncio.get_running_loop()
    client = KazooClient(hosts=endpoint, timeout=10.0)
    await asyncio.to_thread(client.start, 10.0)
    root = f"/{prefix}/rawbench"
    await asyncio.to_thread(client.ensure_path, root)
    keys = [f"{root}/k{i}" for i in range(KEYSPACE)]
    cas = [f"{root}/cas{w}" for w in range(concurrency)]
    for path in keys + cas:
        await asyncio.to_thread(client.create, path, VALUE)
    versions = [0] * concurrency

    def bridge(async_result: Any) -> asyncio.Future[Any]:
        """A loop future completed from kazoo's callback thread."""
        future: asyncio.Future[Any] = loop.create_future()

        def done(res: Any) -> None:
            def settle() -> None:
                if future.done():
                    return
                try:
                    future.set_result(res.get_nowait())
                except Exception as exc:
                    future.set_exception(exc)

            loop.call_soon_threadsafe(settle)

        async_result.rawlink(done)
        return future

    async def txn(w: int, i: int) -> None:
        t = client.transaction()
        t.check(cas[w], versions[w])
        t.set_data(cas[w], VALUE)
        results = await bridge(t.commit_async())
        if not (results and results[0] is True):
            raise RuntimeError(f"raw kazoo: check-and-set failed: {results}")
        versions[w] = results[1].version

    async def close() -> None:
        await asyncio.to_thread(client.stop)
        await asyncio.to_thread(client.close)

    return Side(
        put=lambda w, i: bridge(client.set_async(keys[i % KEYSPACE], VALUE)),
        get=lambda w, i: bridge(client.get_async(keys[i % KEYSPACE])),
        txn=txn,
        close=close,
    )


# --- driver ----------------------------------------------------------------------------------------------


async def compare(name: str, adapter: Side, raw: Side, ops: int, concurrency: int, rounds: int) -> Result:
    result = Result(name, {"adapter": {}, "raw": {}}, {}, {"adapter": {}, "raw": {}})
    warmup = max(ops // 10, concurrency)
    for op in OPERATIONS:
        best = {"adapter": 0.0, "raw": 0.0}
        cpu = {"adapter": float("inf"), "raw": float("inf")}
        sides = {"adapter": getattr(adapter, op), "raw": getattr(raw, op)}
        for side_op in sides.values():
            await measure(side_op, warmup, concurrency)
        result.paired[op] = []
        for r in range(rounds):
            order = ("adapter", "raw") if r % 2 == 0 else ("raw", "adapter")
            rate: dict[str, float] = {}
            for side in order:
                rate[side], cpu_us = await measure(sides[side], ops, concurrency)
                best[side] = max(best[side], rate[side])
                cpu[side] = min(cpu[side], cpu_us)
            result.paired[op].append(rate["adapter"] / rate["raw"])
        for side in best:
            result.rates[side][op] = best[side]
            result.cpu_us[side][op] = cpu[side]
    return result


def table(results: list[Result], skipped: dict[str, str], ops: int, concurrency: int, rounds: int) -> str:
    lines = [
        f"KV adapter vs raw client: {ops} ops per run, {concurrency} concurrent coroutines",
        f"rates: best of {rounds} runs; ratio: median over {rounds} adapter/raw pairs run back to back "
        f"(goal >= {GOAL}); CPU: this process, least per op",
        f"{'backend':<10} {'op':<5} {'adapter ops/s':>14} {'raw ops/s':>12} {'ratio':>7}  {'vs goal':<11}"
        f" {'CPU µs/op adapter/raw':>22}",
    ]
    for res in results:
        for op in OPERATIONS:
            ratio = res.ratio(op)
            mark = "ok" if ratio >= GOAL else "BELOW GOAL"
            lines.append(
                f"{res.backend:<10} {op:<5} {res.rates['adapter'][op]:>14.0f} "
                f"{res.rates['raw'][op]:>12.0f} {ratio:>7.2f}  {mark:<11}"
                f" {res.cpu_us['adapter'][op]:>15.0f} / {res.cpu_us['raw'][op]:<4.0f}"
            )
    lines += [f"{name:<10} skipped: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.servers import EtcdServer, ZooKeeperServer  # the same real servers the tests start

    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: list[Result] = []
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shoal-bench-kv-")))
        if "etcd" in wanted:
            etcd = EtcdServer(base / "etcd")
            stack.callback(etcd.cleanup)
            await asyncio.to_thread(etcd.start)
            adapter = await adapter_side(etcd.url, args.concurrency)
            raw = await etcd_raw("127.0.0.1", etcd.port, etcd.prefix, args.concurrency)
            try:
                results.append(await compare("etcd", adapter, raw, args.ops, args.concurrency, args.rounds))
            finally:
                await adapter.close()
                await raw.close()
        if "zookeeper" in wanted:
            if importlib.util.find_spec("kvstore_adapters.zookeeper") is None:
                skipped["zookeeper"] = "kvstore_adapters/zookeeper.py does not exist yet"
            else:
                zk = ZooKeeperServer(base / "zookeeper")
                stack.callback(zk.cleanup)
                await asyncio.to_thread(zk.start)
                adapter = await adapter_side(zk.url, args.concurrency)
                raw = await zk_raw(zk.endpoint, zk.prefix, args.concurrency)
                try:
                    results.append(
                        await compare("zookeeper", adapter, raw, args.ops, args.concurrency, args.rounds)
                    )
                finally:
                    await adapter.close()
                    await raw.close()
    print(table(results, skipped, args.ops, args.concurrency, args.rounds), flush=True)
    report: dict[str, Any] = {
        "bench": "kvstore",
        "ops": args.ops,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "goal_ratio": GOAL,
    }
    for res in results:
        report[res.backend] = {
            "adapter_ops_per_s": {op: round(v, 1) for op, v in res.rates["adapter"].items()},
            "raw_ops_per_s": {op: round(v, 1) for op, v in res.rates["raw"].items()},
            "ratio": {op: round(res.ratio(op), 3) for op in OPERATIONS},
            "round_ratios": {op: [round(x, 3) for x in res.paired[op]] for op in OPERATIONS},
            "adapter_cpu_us_per_op": {op: round(v, 1) for op, v in res.cpu_us["adapter"].items()},
            "raw_cpu_us_per_op": {op: round(v, 1) for op, v in res.cpu_us["raw"].items()},
            "meets_goal": all(res.ratio(op) >= GOAL for op in OPERATIONS),
        }
    for name, why in skipped.items():
        report[name] = {"skipped": why}
    report["meets_goal"] = bool(results) and all(report[r.backend]["meets_goal"] for r in results)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kvstore", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per measured run (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent coroutines (default 16)")
    parser.add_argument("--rounds", type=int, default=5, help="adapter/raw pairs per op (default 5)")
    parser.add_argument("--backends", default="etcd,zookeeper", help="comma-separated: etcd, zookeeper")
    args = parser.parse_args(argv)
    if args.ops <= 0 or args.concurrency <= 0 or args.rounds <= 0:
        parser.error("--ops, --concurrency and --rounds must be positive")
    report = asyncio.run(run(args))
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
