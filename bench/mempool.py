"""newPendingTransactions throughput: mevwatch's mempool_stream collector vs bare aiohttp and websockets clients.

A local WebSocket server (its own process) answers ``eth_subscribe`` and then pushes notifications,
either as fast as it can (flood: how many per second a consumer keeps up with) or paced at --rate
(the consumer's CPU share at a realistic mainnet-plus load). Each consumer runs in its own process
against a fresh server, and reports notifications consumed per second and its CPU (process time /
wall time, 1.0 = one core). Target: mevwatch >= 5,000/s at < 0.5 core.

    .venv/bin/python bench/mempool.py [--seconds 5] [--rate 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import free_port, load_average, machine, record, start, stop

IMPLS = ("mevwatch", "aiohttp", "websockets")
SUB_ID = "0x9cef478923ff08bf67fde6c64013158d"


# --- the server ------------------------------------------------------------------------------------


def _messages(n: int = 4096) -> list[str]:
    return [
        json.dumps({"jsonrpc": "2.0", "method": "eth_subscription",
                    "params": {"subscription": SUB_ID, "result": "0x" + f"{i:064x}"}}, separators=(",", ":"))
        for i in range(n)
    ]


async def serve(port: int, rate: float) -> None:
    from aiohttp import WSMsgType, web

    messages = _messages()

    async def push(ws: web.WebSocketResponse) -> None:
        i = 0
        if rate <= 0:  # flood: as fast as the socket takes them
            while not ws.closed:
                for _ in range(256):
                    await ws.send_str(messages[i & 4095])
                    i += 1
                await asyncio.sleep(0)
            return
        tick = 0.005
        per_tick = rate * tick
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while not ws.closed:
            due = int((loop.time() - started) / tick * per_tick) + int(per_tick)
            while sent < due:
                await ws.send_str(messages[sent & 4095])
                sent += 1
            await asyncio.sleep(tick)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        pusher: asyncio.Task[None] | None = None
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            req = json.loads(msg.data)
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": SUB_ID}))
            if req.get("method") == "eth_subscribe" and pusher is None:
                pusher = asyncio.create_task(push(ws))
        if pusher is not None:
            pusher.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# --- the consumers ---------------------------------------------------------------------------------


async def consume(impl: str, url: str, warmup: float, seconds: float) -> dict[str, Any]:
    count = [0]
    task: asyncio.Task[Any]
    collector: Any = None
    subscribe = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                            "params": ["newPendingTransactions"]})
    if impl == "mevwatch":
        from mevwatch.collectors.base import CollectorContext
        from mevwatch.collectors.mempool_stream import MempoolStreamCollector, MempoolStreamOptions

        opts = MempoolStreamOptions.model_validate({"endpoint": {"name": "bench", "url": url}})
        collector = MempoolStreamCollector(
            CollectorContext(kind="mempool_stream", instance="bench", interval=1.0, timeout=5.0), opts)
        task = asyncio.create_task(collector.run(lambda families: None))

        def counted() -> int:
            return int(collector.notifications)
    elif impl == "aiohttp":
        import aiohttp

        async def run_aiohttp() -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str(subscribe)
                async for msg in ws:
                    doc = json.loads(msg.data)  # a real consumer decodes each notification
                    if doc.get("method") == "eth_subscription":
                        count[0] += 1

        task = asyncio.create_task(run_aiohttp())

        def counted() -> int:
            return count[0]
    else:
        import websockets

        async def run_websockets() -> None:
            async with websockets.connect(url, max_size=None, compression=None) as ws:
                await ws.send(subscribe)
                async for raw in ws:
                    doc = json.loads(raw)
                    if doc.get("method") == "eth_subscription":
                        count[0] += 1

        task = asyncio.create_task(run_websockets())

        def counted() -> int:
            return count[0]

    await asyncio.sleep(warmup)
    c0, t0, p0 = counted(), time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    c1, t1, p1 = counted(), time.perf_counter(), time.process_time()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    dropped = 0
    if collector is not None:
        dropped = int(collector.dropped)
        await collector.close()
    return {"impl": impl, "per_second": (c1 - c0) / (t1 - t0), "cpu_cores": (p1 - p0) / (t1 - t0),
            "dropped": dropped}


# --- orchestration ---------------------------------------------------------------------------------


def run_one(impl: str, rate: float, seconds: float) -> dict[str, Any]:
    port = free_port()
    server = start([sys.executable, __file__, "--role", "server", "--port", str(port), "--rate", str(rate)], port)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--role", "consumer", "--impl", impl, "--port", str(port),
             "--seconds", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--role", choices=("main", "server", "consumer"), default="main")
    ap.add_argument("--impl", choices=IMPLS, default="mevwatch")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate", type=float, default=5000.0, help="paced notifications per second (0: flood)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per consumer run")
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(serve(args.port, args.rate))
        return
    if args.role == "consumer":
        result = asyncio.run(consume(args.impl, f"ws://127.0.0.1:{args.port}/", 1.0, args.seconds))
        print(json.dumps(result))
        return

    print(f"machine: {machine()}; nproc {os.cpu_count()}; load average {load_average()}")
    print(f"{'mode':<16} {'consumer':<11} {'notif/s':>10} {'CPU cores':>10} {'dropped':>8}")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for mode, rate in (("flood", 0.0), (f"paced {args.rate:g}/s", args.rate)):
        for impl in IMPLS:
            r = run_one(impl, rate, args.seconds)
            rows[(mode, impl)] = r
            print(f"{mode:<16} {impl:<11} {r['per_second']:>10,.0f} {r['cpu_cores']:>10.2f} {r['dropped']:>8}")
    flood = rows[("flood", "mevwatch")]
    paced = rows[(f"paced {args.rate:g}/s", "mevwatch")]
    bare = rows[("flood", "aiohttp")]
    print(f"mevwatch flood throughput / bare aiohttp: {flood['per_second'] / bare['per_second']:.2f}")
    ok = flood["per_second"] >= 5000 and paced["cpu_cores"] < 0.5 and paced["per_second"] >= 0.95 * args.rate
    print(f"target (>= 5,000/s; < 0.5 core at {args.rate:g}/s): {'met' if ok else 'NOT met'}")
    record("mempool stream notifications/s, flood", mevwatch=flood["per_second"], unit="/s",
           anchor_name="bare aiohttp", anchor=bare["per_second"], goal=">= 5,000/s", met=flood["per_second"] >= 5000)
    record(f"mempool stream CPU at {args.rate:g}/s", mevwatch=paced["cpu_cores"], unit="cores",
           anchor_name="bare aiohttp", anchor=rows[(f"paced {args.rate:g}/s", "aiohttp")]["cpu_cores"],
           goal="< 0.5 core", met=paced["cpu_cores"] < 0.5)


if __name__ == "__main__":
    main()
