"""Benchmark avaturn-session against the loopback fake from the test suite.

Run from the repository root:  python benchmarks/bench_session.py [--calls N]

Prints ratios (absolute times vary by machine):
1. session start over TLS on 127.0.0.1, both README flows (mint the engine
   credential, then create_session) against the floor: the same HTTP requests
   on an openai.OpenAI and a requests.Session built once. Wall and CPU ms per
   start, and the TCP connections each fake accepted. The fakes run in a child
   process, so the CPU time measured is the client's alone; the client trusts
   a bundle of certifi's roots plus the test CA (trustme), so SSL-context costs
   are the production ones;
2. client.create_session vs a bare requests.Session().post of the same request;
3. client.create_session vs the docs' pattern of a new HTTP client per call;
4. import cost of avaturn_session vs requests alone (python -X importtime);
5. 32 threads on one client against a fake that takes 50 ms per call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests

import avaturn_session as av

sys.path.insert(0, str(ROOT / "testing"))
from fake_avaturn import KEY, FakeAvaturn  # the loopback fake the tests use too

BODY = {
    "conversation_engine": av.text_echo_engine("voice_1"),
    "user_absent_timeout": 30,
}


GOAL = 1.10  # each flow within 1.10x of the floor, wall and CPU; import too
HOSTS = ("avaturn", "openai", "cartesia")
OPENAI_SESSION = {"type": "realtime", "model": "gpt-realtime"}


def serve_tls(
    conn: multiprocessing.connection.Connection, ca_pem_key: tuple[bytes, bytes]
) -> None:
    """Child process: one TLS fake per host; answers 'stats' with connection counts."""
    import trustme

    ca = trustme.CA.from_pem(*ca_pem_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    fakes = {}
    for host in HOSTS:
        fake = FakeAvaturn()
        fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
        fakes[host] = fake
    conn.send({h: f.url.replace("http://", "https://") for h, f in fakes.items()})
    while (command := conn.recv()) != "stop":
        conn.send(
            {h: f.connections for h, f in fakes.items()} if command == "stats" else None
        )
    for fake in fakes.values():
        fake.close()


def per_start(call: Callable[[], object], starts: int) -> tuple[float, float]:
    """(wall s, process CPU s) per call, over `starts` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(starts):
        call()
    return (
        (time.perf_counter() - wall) / starts,
        (time.process_time() - cpu) / starts,
    )


def session_start(starts: int, rounds: int) -> list[dict[str, object]]:
    """Both README flows vs their floor over TLS; one dict per flow."""
    import certifi
    import openai
    import trustme

    ca = trustme.CA()
    fd, bundle = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(fd, "wb") as out:
        out.write(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
    parent, child = multiprocessing.get_context("fork").Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=serve_tls,
        args=(child, (ca.cert_pem.bytes(), ca.private_key_pem.bytes())),
    )
    server.start()
    urls = parent.recv()

    def stats() -> dict[str, int]:
        parent.send("stats")
        return parent.recv()

    os.environ.update(
        REQUESTS_CA_BUNDLE=bundle,  # requests, for Avaturn and Cartesia
        SSL_CERT_FILE=bundle,  # httpx (the openai SDK)
        AVATURN_API_KEY=KEY,
        AVATURN_BASE_URL=urls["avaturn"],
        OPENAI_API_KEY="sk-bench",
        OPENAI_BASE_URL=urls["openai"] + "/v1",
        CARTESIA_API_KEY="ck-bench",
        CARTESIA_BASE_URL=urls["cartesia"],
    )
    try:

        def library_openai() -> object:
            secret = av.mint_openai_client_secret({"model": "gpt-realtime"})
            return av.create_session(
                av.openai_realtime_engine(secret), user_absent_timeout=30
            )

        def library_cartesia() -> object:
            token = av.mint_cartesia_access_token()
            return av.create_session(
                av.cartesia_engine(token, "agent_1"), user_absent_timeout=30
            )

        floor_openai_client = openai.OpenAI(
            api_key="sk-bench", timeout=openai.Timeout(30.0, connect=5.0)
        )
        floor_http = requests.Session()
        auth = {"Authorization": f"Bearer {KEY}"}
        create_url = urls["avaturn"] + "/api/v1/sessions"

        def floor_create(engine: dict[str, str]) -> object:
            body = {"conversation_engine": engine, "user_absent_timeout": 30}
            return floor_http.post(
                create_url, json=body, headers=auth, timeout=(5, 30)
            ).json()

        def floor_openai() -> object:
            secret = floor_openai_client.realtime.client_secrets.create(
                expires_after={"seconds": 600, "anchor": "created_at"},
                session=OPENAI_SESSION,
            ).value
            return floor_create({"type": "openai-realtime", "client_secret": secret})

        def floor_cartesia() -> object:
            token = floor_http.post(
                urls["cartesia"] + "/access-token",
                json={"grants": {"agent": True}, "expires_in": 300},
                headers={
                    "Authorization": "Bearer ck-bench",
                    "Cartesia-Version": "2025-04-16",
                },
                timeout=(5, 30),
            ).json()["token"]
            return floor_create(
                {"type": "cartesia", "access_token": token, "agent_id": "agent_1"}
            )

        cases = (
            (
                "OpenAI: mint_openai_client_secret + create_session",
                library_openai,
                floor_openai,
                "openai",
            ),
            (
                "Cartesia: mint_cartesia_access_token + create_session",
                library_cartesia,
                floor_cartesia,
                "cartesia",
            ),
        )
        # Phase 1, the library alone against fresh fakes: the connections it opens.
        for _, library, _, _ in cases:
            for _ in range(starts * rounds):
                library()
        opened = stats()
        # Phase 2, timing: library and floor rounds interleaved, so both see the
        # same machine load; the median round counts.
        flows = []
        for name, library, floor, minted_at in cases:
            library()
            floor()  # warm-up: the floor's own connections and caches
            samples: dict[str, list[tuple[float, float]]] = {"ours": [], "floor": []}
            for _ in range(rounds):
                for key, call in (("ours", library), ("floor", floor)):
                    samples[key].append(per_start(call, starts))
            flows.append(
                {
                    "flow": name,
                    "ours": tuple(statistics.median(x) for x in zip(*samples["ours"])),
                    "floor": tuple(
                        statistics.median(x) for x in zip(*samples["floor"])
                    ),
                    "connections": {h: opened[h] for h in ("avaturn", minted_at)},
                    "starts": starts * rounds,
                }
            )
        av.close_shared_clients()
        return flows
    finally:
        parent.send("stop")
        server.join(10)
        os.unlink(bundle)


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


def import_us(repeats: int = 21) -> tuple[float, float, bool]:
    """Median cumulative import µs of requests and of avaturn_session (runs
    interleaved, so both see the same machine load), and whether openai was
    imported."""
    times: dict[str, list[float]] = {"requests": [], "avaturn_session": []}
    # Like an installed package: bytecode cached (the first run writes it), as
    # requests' is. PYTHONDONTWRITEBYTECODE would recompile ours on every run.
    import_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    import_env.pop("PYTHONDONTWRITEBYTECODE", None)
    saw_openai = False
    for _ in range(repeats):
        for module, samples in times.items():
            result = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", f"import {module}"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=import_env,
                check=True,
            )
            for line in result.stderr.splitlines():
                parts = [
                    p.strip() for p in line.removeprefix("import time:").split("|")
                ]
                if len(parts) == 3 and parts[2] == module:
                    samples.append(float(parts[1]))
                if len(parts) == 3 and parts[2].split(".")[0] == "openai":
                    saw_openai = True
    return (
        statistics.median(times["requests"]),
        statistics.median(times["avaturn_session"]),
        saw_openai,
    )


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
    parser.add_argument(
        "--starts", type=int, default=200, help="session starts per round"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    flows = session_start(args.starts, args.rounds)
    requests_import, ours_import, saw_openai = import_us()
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
        wall, ideal, connections = threaded(fake, threads=32, calls=8)
    finally:
        fake.close()

    ok = not saw_openai
    print(
        f"session start over TLS on 127.0.0.1 (goal: <= {GOAL:.2f}x the floor, wall and CPU;"
    )
    print("one connection per host for any number of starts)")
    print(
        f"{'flow':55} {'wall ms':>8} {'floor':>7} {'ratio':>6}  {'CPU ms':>7} {'floor':>7} {'ratio':>6}  connections"
    )
    for flow in flows:
        (wall_ours, cpu_ours), (wall_floor, cpu_floor) = flow["ours"], flow["floor"]
        wall_ratio, cpu_ratio = wall_ours / wall_floor, cpu_ours / cpu_floor
        conns = ", ".join(f"{h} {n}" for h, n in flow["connections"].items())
        print(
            f"{flow['flow']:55} {wall_ours * 1e3:8.2f} {wall_floor * 1e3:7.2f} {wall_ratio:5.2f}x"
            f"  {cpu_ours * 1e3:7.2f} {cpu_floor * 1e3:7.2f} {cpu_ratio:5.2f}x"
            f"  {conns} for {flow['starts']} starts"
        )
        ok = ok and wall_ratio <= GOAL and cpu_ratio <= GOAL
        ok = ok and all(n <= 1 for n in flow["connections"].values())
    print()
    rows = [
        ("create_session vs bare Session.post (goal <= 1.10)", ours / floor),
        ("create_session vs new client per call (docs)", ours / docs),
        (
            f"import avaturn_session vs requests (goal <= {GOAL:.2f})",
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
    ok = ok and ours_import / requests_import <= GOAL
    print(f"all goals met: {'yes' if ok else 'no'}")
    print(
        json.dumps(
            {
                "per_call_us": {
                    "create_session": round(ours * 1e6),
                    "bare_post": round(floor * 1e6),
                    "new_client_per_call": round(docs * 1e6),
                },
                "session_start_us": {
                    flow["flow"].split(":")[0]: {
                        "wall": round(flow["ours"][0] * 1e6),
                        "cpu": round(flow["ours"][1] * 1e6),
                        "floor_wall": round(flow["floor"][0] * 1e6),
                        "floor_cpu": round(flow["floor"][1] * 1e6),
                    }
                    for flow in flows
                },
                "import_us": {
                    "avaturn_session": ours_import,
                    "requests": requests_import,
                },
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
