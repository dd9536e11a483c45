"""Load test of `sumie serve` with the embedded model: 64 requests from 8 concurrent clients, then a
burst beyond the queue. Every request must succeed or get 429; the server must stay up with its memory
within 5% of before.

    python benchmarks/server_load.py [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_util import Server  # noqa: E402

BODY = {"prompt": "a small red circle in the top left corner on a blue background", "steps": 20, "cfg_scale": 5,
        "seed": -1}


def client(url: str, n: int, latencies: list, statuses: Counter) -> None:
    with httpx.Client(timeout=600) as http:
        for _ in range(n):
            start = time.perf_counter()
            r = http.post(url + "/sdapi/v1/txt2img", json=BODY)
            statuses[r.status_code] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - start)


def run(url: str, clients: int, per_client: int) -> tuple[list, Counter, float]:
    latencies, statuses = [], Counter()
    threads = [threading.Thread(target=client, args=(url, per_client, latencies, statuses)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, time.perf_counter() - start


def pct(values: list, q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    queue = 16
    server = Server("--queue-size", queue)
    try:
        run(server.url, 2, 2)  # warm-up
        before = server.rss_kib()
        lat, statuses, wall = run(server.url, 8, 8)
        burst_lat, burst, burst_wall = run(server.url, queue + 16, 1)
        alive = httpx.get(server.url + "/sdapi/v1/progress").status_code == 200
        time.sleep(1)
        after = server.rss_kib()
    finally:
        server.stop()
    ok = set(statuses) | set(burst) <= {200, 429}
    rows = [
        "| phase | requests | 200 | 429 | other | p50 | p95 | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| 8 clients x 8 | 64 | {statuses[200]} | {statuses[429]} | {sum(statuses.values()) - statuses[200] - statuses[429]} "
        f"| {pct(lat, 50):.2f} s | {pct(lat, 95):.2f} s | {wall:.1f} s |",
        f"| burst of {queue + 16} (queue {queue}) | {queue + 16} | {burst[200]} | {burst[429]} | "
        f"{sum(burst.values()) - burst[200] - burst[429]} | {pct(burst_lat, 50):.2f} s | {pct(burst_lat, 95):.2f} s "
        f"| {burst_wall:.1f} s |",
    ]
    summary = (f"Server up afterwards: {'yes' if alive else 'NO'}; every answer 200 or 429: {'yes' if ok else 'NO'}; "
               f"RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after ({after / before - 1:+.1%}).")
    print("\n".join(rows) + "\n\n" + summary)
    if args.write:
        from doc import write_section
        intro = ("`python benchmarks/server_load.py --write`: `sumie serve` with the embedded model (64x64, 20 steps, "
                 "guidance 5) on this machine; latency is per request, queueing included.\n\n")
        write_section("## Server load (issue 8)", intro + "\n".join(rows) + "\n\n" + summary)
    if not (ok and alive and after <= before * 1.05):
        sys.exit(1)


if __name__ == "__main__":
    main()
