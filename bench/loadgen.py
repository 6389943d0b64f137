"""A load generator in its own process: distinct, signed Standard-Webhooks deliveries
of HR terminations, sent with a fixed number in flight; prints a JSON summary.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1/hooks/hr/hris \\
        --secret whsec_... --count 20000 --concurrency 32 --first 0

Every request is built and signed (by the `standardwebhooks` library) before the
clock starts, so the generator's own cost during the run is sending and reading.
The first --warmup answers are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from bench.emulators import login_of


def build(secret: str, count: int, first: int) -> list[tuple[dict[str, str], bytes]]:
    webhook = Webhook(secret)
    now = datetime.now(UTC)
    requests = []
    for i in range(first, first + count):
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "type": "employee.terminated",
                "data": {"email": login_of("leaver", i), "hr_reference": f"HR-{i}"},
            }
        )
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(msg_id, now, body),
        }
        requests.append((headers, body.encode()))
    return requests


async def run(args: argparse.Namespace) -> dict[str, object]:
    prepared = build(args.secret, args.count, args.first)
    queue: asyncio.Queue[tuple[int, tuple[dict[str, str], bytes]]] = asyncio.Queue()
    for item in enumerate(prepared):
        queue.put_nowait(item)
    latencies: list[tuple[int, float]] = []
    statuses: dict[int, int] = {}
    marks: list[float] = []

    async def sender(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            n, (headers, body) = queue.get_nowait()
            if n == args.warmup:
                marks.append(time.perf_counter())
            started = time.perf_counter()
            async with http.post(args.url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append((n, time.perf_counter() - started))

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(sender(http) for _ in range(args.concurrency)))
        ended = time.perf_counter()
    counted = sorted(t for n, t in latencies if n >= args.warmup)
    measured_from = marks[0] if marks else started

    def pct(p: float) -> float:
        return counted[min(len(counted) - 1, int(len(counted) * p / 100))] * 1000

    return {
        "sent": len(latencies),
        "counted": len(counted),
        "statuses": statuses,
        "seconds": round(ended - measured_from, 3),
        "per_second": round(len(counted) / (ended - measured_from), 1),
        "p50_ms": round(pct(50), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(counted[-1] * 1000, 2),
        "total_seconds": round(ended - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=500)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
