"""Session start in round trips: a fresh worker's first start, with and without
warm(), every later start, the docs' style and the floor, at 0, 50 and 100 ms RTT.

Run from the repository root:  python benchmarks/bench_rtt.py [--workers N]

Two fakes (Avaturn and OpenAI, TLS 1.3 on 127.0.0.1, certificates from a test
CA) sit behind `delay_proxy.DelayProxy`, which adds the round trip time to every
exchange, the TCP handshake included. Each measured start runs in a fresh worker
process (a new `python`, as gunicorn or celery starts one), after the import
its app does at boot. A start is the README's OpenAI flow: mint a client
secret, then create the session. Rows:

- docs' style: a new HTTP connection for every call, as the docs' snippets do;
- first start, cold: the first start in a fresh worker, no warm();
- first start, warm(): the same after warm() (warm() itself timed apart);
- every later start: the worker's next starts (the median);
- every later start, ready credential: the same with ``ready=True``, each start
  a second after the last (the helper has minted the next one by then);
- floor: connections open and the credential already minted: one create.

The OpenAI fake takes MINT_MS to issue a credential, as a provider does.

Prints ms, round trips (ms / RTT) and the ratio to the floor, per RTT, and
whether the targets hold: the first start after warm() within 1.10x of every
later start at 100 ms, warm() itself at most about 2 round trips, and a start
with a ready credential within 1.10x of the floor at 100 ms.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "testing"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from delay_proxy import DelayProxy
from fake_avaturn import KEY, FakeAvaturn

RTTS_MS = (0, 50, 100)
HOSTS = ("avaturn", "openai")
GOAL_WARM_VS_LATER = 1.10
GOAL_WARM_RTTS = 2.5  # "about 2": TCP and TLS 1.3 handshakes, hosts in parallel
GOAL_READY_VS_FLOOR = 1.10
MINT_MS = 150  # what the OpenAI fake takes to issue a credential

# One fresh worker: argv[1] is the mode, argv[2] the later starts to time.
WORKER = r"""
import json, sys, time
mode, later_starts = sys.argv[1], int(sys.argv[2])
if mode in ("cold", "warm", "ready"):
    import avaturn_session as av  # the app's import at boot, not timed

    def start():
        config = {"model": "gpt-realtime"}
        secret = av.mint_openai_client_secret(config, ready=mode == "ready")
        av.create_session(av.openai_realtime_engine(secret), user_absent_timeout=30)
else:
    import os, requests

    headers = {"Authorization": "Bearer " + os.environ["AVATURN_API_KEY"]}
    create_url = os.environ["AVATURN_BASE_URL"] + "/api/v1/sessions"
    mint_url = os.environ["OPENAI_BASE_URL"] + "/realtime/client_secrets"
    mint_body = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    mint_headers = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
    engine = {"type": "openai-realtime", "client_secret": "ek_minted_before"}
    floor = requests.Session()

    def start():
        if mode == "docs":  # a new client (connection) per call
            secret = requests.post(mint_url, json=mint_body, headers=mint_headers).json()
            minted = {"type": "openai-realtime", "client_secret": secret["value"]}
            requests.post(create_url, json={"conversation_engine": minted}, headers=headers)
        else:  # floor: an open connection, the credential minted before
            floor.post(create_url, json={"conversation_engine": engine}, headers=headers)

    if mode == "floor":
        start()  # opens the connection
out = {}
if mode in ("warm", "ready"):
    began = time.perf_counter()
    out["cold_hosts"] = av.warm()
    out["warm"] = time.perf_counter() - began
began = time.perf_counter()
start()
out["first"] = time.perf_counter() - began
later = []
for _ in range(later_starts):
    if mode == "ready":
        time.sleep(1)  # visitors come apart: the next credential is minted by then
    began = time.perf_counter()
    start()
    later.append(time.perf_counter() - began)
out["later"] = later
print(json.dumps(out))
"""


def serve(
    conn: multiprocessing.connection.Connection, ca_pem: tuple[bytes, bytes]
) -> None:
    """Child process: TLS fakes, and a delay proxy per host and RTT in front."""
    import trustme

    ca = trustme.CA.from_pem(*ca_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    fakes = {}
    for host in HOSTS:
        fakes[host] = FakeAvaturn()
        fakes[host].mint_latency = MINT_MS / 1000
        fakes[host].server.socket = context.wrap_socket(
            fakes[host].server.socket, server_side=True
        )
    urls = {}
    for rtt in RTTS_MS:
        for host, fake in fakes.items():
            port = fake.server.server_address[1]
            proxy = DelayProxy(port, one_way=rtt / 2000).start()
            urls.setdefault(rtt, {})[host] = f"https://127.0.0.1:{proxy.port}"
    conn.send(urls)
    conn.recv()  # "stop"
    for fake in fakes.values():
        fake.close()


def run_worker(mode: str, env: dict[str, str], later_starts: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, mode, str(later_starts)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=5, help="fresh workers per row")
    parser.add_argument("--later", type=int, default=5, help="later starts per worker")
    args = parser.parse_args()

    import certifi
    import trustme

    ca = trustme.CA()
    fd, bundle = tempfile.mkstemp(suffix=".pem")
    with os.fdopen(fd, "wb") as out:
        out.write(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
    parent, child = multiprocessing.get_context("fork").Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(child, (ca.cert_pem.bytes(), ca.private_key_pem.bytes()))
    )
    server.start()
    urls = parent.recv()
    table: dict[int, dict[str, float]] = {}
    try:
        for rtt in RTTS_MS:
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "REQUESTS_CA_BUNDLE": bundle,
                "AVATURN_API_KEY": KEY,
                "AVATURN_BASE_URL": urls[rtt]["avaturn"],
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": urls[rtt]["openai"] + "/v1",
            }
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as installed
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env.pop(name, None)
            runs = {
                mode: [run_worker(mode, env, args.later) for _ in range(args.workers)]
                for mode in ("docs", "cold", "warm", "ready", "floor")
            }
            assert all(run["cold_hosts"] == [] for run in runs["warm"] + runs["ready"])
            later = [
                t for mode in ("cold", "warm") for r in runs[mode] for t in r["later"]
            ]
            table[rtt] = {
                "docs' style (new connection per call)": statistics.median(
                    r["first"] for r in runs["docs"]
                ),
                "first start in a fresh worker, cold": statistics.median(
                    r["first"] for r in runs["cold"]
                ),
                "first start in a fresh worker, warm()": statistics.median(
                    r["first"] for r in runs["warm"]
                ),
                "every later start": statistics.median(later),
                "every later start, ready credential": statistics.median(
                    t for r in runs["ready"] for t in r["later"]
                ),
                "floor (open connection, minted secret)": statistics.median(
                    t for r in runs["floor"] for t in [r["first"], *r["later"]]
                ),
                "warm() itself": statistics.median(r["warm"] for r in runs["warm"]),
            }
    finally:
        parent.send("stop")
        server.join(10)
        os.unlink(bundle)

    floor_name = "floor (open connection, minted secret)"
    for rtt, rows in table.items():
        print(f"\nRTT {rtt} ms (TLS 1.3, 127.0.0.1 through a delay proxy)")
        print(f"  {'':42} {'ms':>8} {'round trips':>12} {'x floor':>8}")
        for name, seconds in rows.items():
            trips = f"{seconds * 1000 / rtt:12.1f}" if rtt else f"{'-':>12}"
            print(
                f"  {name:42} {seconds * 1000:8.1f} {trips} {seconds / rows[floor_name]:7.2f}x"
            )
    at_100 = table[100]
    warm_vs_later = (
        at_100["first start in a fresh worker, warm()"] / at_100["every later start"]
    )
    warm_trips = at_100["warm() itself"] * 1000 / 100
    ready = at_100["every later start, ready credential"] / at_100[floor_name]
    ok = warm_vs_later <= GOAL_WARM_VS_LATER and warm_trips <= GOAL_WARM_RTTS
    ok = ok and ready <= GOAL_READY_VS_FLOOR
    print(
        f"\nat 100 ms: first start after warm() / every later start = "
        f"{warm_vs_later:.2f}x (goal <= {GOAL_WARM_VS_LATER:.2f}x); "
        f"warm() itself {warm_trips:.1f} round trips (goal about 2); "
        f"a start with a ready credential / the floor = {ready:.2f}x "
        f"(goal <= {GOAL_READY_VS_FLOOR:.2f}x); minting takes {MINT_MS} ms"
    )
    print(f"all goals met: {'yes' if ok else 'no'}")
    print(
        json.dumps(
            {
                str(rtt): {k: round(v * 1000, 1) for k, v in rows.items()}
                for rtt, rows in table.items()
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
