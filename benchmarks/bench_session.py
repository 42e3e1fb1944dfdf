"""Benchmark avaturn-session against the loopback fake from the test suite.

Run from the repository root:  python benchmarks/bench_session.py [--calls N]

Prints ratios (absolute times vary by machine):
1. client.create_session vs a bare requests.Session().post of the same request;
2. client.create_session vs the docs' pattern of a new HTTP client per call;
3. import cost of avaturn_session vs requests alone (python -X importtime);
4. 32 threads on one client against a fake that takes 50 ms per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests

import avaturn_session as av
from test_avaturn_session import KEY, FakeAvaturn  # the suite's one fake

BODY = {
    "conversation_engine": av.text_echo_engine("voice_1"),
    "user_absent_timeout": 30,
}


def per_call_seconds(call: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over `rounds` of the mean seconds per call."""
    call()  # warm up: connection, caches
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


def cumulative_import_us(module: str, repeats: int = 9) -> tuple[float, bool]:
    """Median cumulative import time of `module` in µs, and whether openai was imported."""
    times, saw_openai = [], False
    for _ in range(repeats):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        for line in result.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] == module:
                times.append(float(parts[1]))
            if len(parts) == 3 and parts[2].split(".")[0] == "openai":
                saw_openai = True
    return statistics.median(times), saw_openai


def threaded(fake: FakeAvaturn, threads: int, calls: int) -> tuple[float, float, int]:
    """Wall seconds, ideal seconds and TCP connections for `threads` x `calls` creates."""
    fake.latency = 0.05
    connections_before = fake.connections
    client = av.AvaturnClient(KEY, base_url=fake.url)
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            client.create_session(BODY["conversation_engine"])

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    fake.latency = 0.0
    client.close()
    return wall, calls * 0.05, fake.connections - connections_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    fake = FakeAvaturn()
    try:
        client = av.AvaturnClient(KEY, base_url=fake.url)
        url = fake.url + "/api/v1/sessions"
        headers = {"Authorization": f"Bearer {KEY}"}
        bare = requests.Session()
        ours = per_call_seconds(
            lambda: client.create_session(
                BODY["conversation_engine"], user_absent_timeout=30
            ),
            args.calls,
            args.rounds,
        )
        floor = per_call_seconds(
            lambda: bare.post(url, json=BODY, headers=headers, timeout=30).json(),
            args.calls,
            args.rounds,
        )
        docs = per_call_seconds(
            lambda: requests.post(url, json=BODY, headers=headers, timeout=30).json(),
            max(args.calls // 5, 20),
            args.rounds,
        )
        ours_import, saw_openai = cumulative_import_us("avaturn_session")
        requests_import, _ = cumulative_import_us("requests")
        wall, ideal, connections = threaded(fake, threads=32, calls=8)
    finally:
        fake.close()

    rows = [
        ("create_session vs bare Session.post (goal <= 1.10)", ours / floor),
        ("create_session vs new client per call (docs)", ours / docs),
        (
            "import avaturn_session vs requests (goal <= 1.25)",
            ours_import / requests_import,
        ),
        ("32 threads x 8 creates, 50 ms fake: wall / ideal", wall / ideal),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)}  ratio")
    for name, ratio in rows:
        print(f"{name.ljust(width)}  {ratio:5.2f}x")
    print(
        f"openai imported by 'import avaturn_session': {'yes' if saw_openai else 'no'}"
    )
    print(f"TCP connections opened by the 32 threads: {connections}")
    print(
        json.dumps(
            {
                "per_call_us": {
                    "create_session": round(ours * 1e6),
                    "bare_post": round(floor * 1e6),
                    "new_client_per_call": round(docs * 1e6),
                },
                "import_us": {
                    "avaturn_session": ours_import,
                    "requests": requests_import,
                },
            }
        )
    )
    return 1 if saw_openai else 0


if __name__ == "__main__":
    sys.exit(main())
