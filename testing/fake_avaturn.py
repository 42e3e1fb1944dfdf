"""A fake Avaturn.Live API on 127.0.0.1, for the tests, the benchmarks, and
your own manual runs: `python testing/fake_avaturn.py` serves it and prints
the environment that points avaturn_session (and its CLI) at it.

`FakeAvaturn` is a stdlib ThreadingHTTPServer that speaks the session API (and
OpenAI's and Cartesia's minting endpoints, and what the browser's Web SDK asks),
keeps the server-side truth (what it created, spoke, terminated, minted; which
connection carried what), and misbehaves on cue (`Fault`): the hostile server a
client must survive. Nothing here talks to any other host. What it answers:

    POST   /api/v1/sessions             {"conversation_engine"?, "avatar_id"?, ...}
                                        -> 200 {"session_id", "token"} (422, 410, 401)
    POST   /api/v1/sessions/{id}/tasks  {"text"} -> 200 {"task_id"} (404)
    DELETE /api/v1/sessions/{id}        -> 204 (404 once gone)
    POST   /v1/realtime/client_secrets  {"expires_after", "session"}
                                        -> 200 {"value", "expires_at", "session"}
    POST   /access-token                {"grants", "expires_in"} -> 200 {"token"}
    GET    /_sdk/v0/sessions            X-Session-Token -> what the Web SDK's init() reads
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "av-test-key"

# --------------------------------------------------------------------------- #
# The fake Avaturn (also serves OpenAI's and Cartesia's minting endpoints)
# --------------------------------------------------------------------------- #


@dataclass
class Fault:
    """One scripted misbehaviour of the fake for one request.

    kinds: status (answer `status`, optional `retry_after`, no work done), late
    (do the work, answer after `delay` s), reset (do the work, reset the TCP
    connection), html (502 proxy page, no work), truncated (do the work, send
    half the body and close), empty (do the work, 200 with no body), redirect
    (307, no work), echo (500 echoing the request's body, its Authorization
    header and every session token the fake issued, with the first token also
    as the request id and as a JSON key).
    Hostile kinds: header_trickle / body_trickle (do the work, then send the
    whole answer, or only its body, one byte every `delay` s), huge (`status`
    with a 200 MB body, no work), endless (`status` with a chunked body that
    never ends), gzip_bomb (`status`, a small gzip body that inflates to
    256 MB), raw (`status` with `body`, `content_type` and `headers` as given),
    mangled (do the work, then `body` as the whole answer, head included, with
    {sid}, {token} and {len}, the length of the last body, filled in).
    """

    kind: str
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.6
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """256 MiB of zeros, gzipped to a few hundred KB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join([packer.compress(zeros) for _ in range(256)] + [packer.flush()])


HUGE_BYTES = 200 * 1024 * 1024
# The fake stops writing an endless body after this much (bounded loops).
ENDLESS_CAP = 512 * 1024 * 1024


ROUTES = ("create", "say", "terminate", "openai", "cartesia")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the stdlib's 5 resets a burst of 32 connects


class FakeAvaturn:
    """A stdlib ThreadingHTTPServer on a free loopback port speaking the API.

    It keeps the server-side truth: `sessions` alive now, `created` (every id it
    ever made, with the request body), `spoken` (session id, text), `attempts`
    (a Counter per route), `connections` (TCP connections accepted).
    """

    def __init__(self, api_key: str = KEY) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.created: dict[str, dict[str, Any]] = {}
        self.spoken: list[tuple[str, str]] = []
        self.attempts: Counter[str] = Counter()
        # every request of any kind, as (method, path): the API's and a browser's
        self.requests: list[tuple[str, str]] = []
        self.connections = 0
        self.latency = 0.0
        # seconds an idle keep-alive connection stays open (then the fake ends it)
        self.idle_timeout = 15.0
        # seconds a provider takes to issue a credential (minting routes only)
        self.mint_latency = 0.0
        # headers added to every API answer, e.g. ("Keep-Alive", "timeout=2")
        self.reply_headers: list[tuple[str, str]] = []
        self.scripts: dict[str, list[Fault]] = {route: [] for route in ROUTES}
        self.chaos: tuple[random.Random, float, list[Fault]] | None = None
        self.token_factory = lambda n: f"tok_{n}_secret"
        self.minted_openai: list[dict[str, Any]] = []
        # every credential issued, in order: (it, the request's body, its key)
        self.mints: list[tuple[str, Any, str]] = []
        self.minted_cartesia: list[dict[str, Any]] = []
        self.last_headers: dict[str, dict[str, str]] = {}
        # (route, client port) per request: which connection carried it
        self.peers: list[tuple[str, int]] = []
        # per trickled answer: (bytes to trickle, bytes out before the client hung up)
        self.trickled: list[tuple[int, int]] = []
        # The browser side: what the Web SDK asked (method, path, token, origin),
        # every body sent to a browser, the SDK file and a page to serve.
        self.sdk_calls: list[dict[str, str | None]] = []
        self.to_browser: list[bytes] = []
        self.sdk_file: Path | None = None
        self.page = ""
        self._n = 0
        # ids the next creates get (else sess_N), e.g. "123.0" for a mangled answer
        self.next_ids: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.timeout = fake.idle_timeout  # idle connections end by themselves
                super().setup()
                # headers and body go out in two writes: without this, Nagle and
                # delayed ACKs add ~40 ms to every response
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake.lock:
                    fake.connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def parse_request(self) -> bool:
                parsed = super().parse_request()
                if parsed:
                    with fake.lock:
                        fake.requests.append((self.command, self.path))
                return parsed

            def do_POST(self) -> None:
                if self.path.startswith(("/_sdk/", "/_test/")):
                    return fake._browser(self, "POST")
                fake._handle(self, "POST")

            def do_GET(self) -> None:
                fake._browser(self, "GET")

            def do_OPTIONS(self) -> None:
                fake._browser(self, "OPTIONS")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda *args: (
            None
        )  # resets and late writes are expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving; a server loop stuck for 10 s fails the test, never hangs it."""
        stopping = threading.Thread(target=self.server.shutdown, daemon=True)
        stopping.start()
        stopping.join(10)
        self.server.server_close()
        assert not stopping.is_alive(), "the fake's server loop is stuck"

    # -- scripting ---------------------------------------------------------- #

    def script(self, route: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `route`, one per request."""
        self.scripts[route].extend(faults)

    def set_chaos(self, seed: int, rate: float, faults: list[Fault]) -> None:
        """Inject a fault from `faults` into a `rate` share of requests, seeded."""
        self.chaos = (random.Random(seed), rate, faults)

    def _next_fault(self, route: str) -> Fault | None:
        with self.lock:
            if self.scripts[route]:
                return self.scripts[route].pop(0)
            if self.chaos is not None:
                rng, rate, faults = self.chaos
                if rng.random() < rate:
                    return rng.choice(faults)
        return None

    # -- serving ------------------------------------------------------------ #

    def _handle(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = urllib.parse.urlsplit(h.path).path
        route, session_id = self._route(method, path)
        if not h.headers.get("Host"):  # as HTTP/1.1 servers (nginx, h11) answer
            return self._reply(h, 400, {"detail": "Missing mandatory Host header"})
        if route is None:
            return self._reply(h, 404, {"detail": "Not Found"})
        with self.lock:
            self.attempts[route] += 1
            self.last_headers[route] = {k.lower(): v for k, v in h.headers.items()}
            self.peers.append((route, h.client_address[1]))
        fault = self._next_fault(route)
        auth = h.headers.get("Authorization", "")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if fault is not None and fault.kind == "echo":
            with self.lock:
                tokens = [s["token"] for s in self.created.values()]
            detail = (
                f"failed for {auth} {' '.join(tokens)} {raw.decode(errors='replace')}"
            )
            first = tokens[0] if tokens else auth
            payload = {"detail": detail, "input": body, first: auth}
            return self._reply(h, 500, payload, [("x-request-id", first)])
        if fault is not None and fault.kind in ("huge", "endless", "gzip_bomb", "raw"):
            return self._hostile(h, fault)
        if fault is not None and fault.kind == "status":
            extra = [("Retry-After", fault.retry_after)] if fault.retry_after else []
            return self._reply(h, fault.status, {"detail": "scripted"}, extra)
        if fault is not None and fault.kind == "html":
            page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
            return self._reply(h, 502, raw=page, content_type="text/html")
        if fault is not None and fault.kind == "redirect":
            return self._reply(h, 307, {}, [("Location", self.url + "/elsewhere")])
        if route in ("create", "say", "terminate") and auth != f"Bearer {self.api_key}":
            return self._reply(h, 401, {"detail": "Invalid API key"})
        status, payload = self._work(route, session_id, body)
        if route in ("openai", "cartesia"):
            value = payload.get("value") or payload.get("token")
            with self.lock:
                self.mints.append((value, body, auth.removeprefix("Bearer ")))
            time.sleep(self.mint_latency)  # the provider's work to issue it
        if self.latency:
            time.sleep(self.latency)
        if fault is None:
            return self._reply(h, status, payload)
        if fault.kind == "late":
            time.sleep(fault.delay)
            return self._reply(h, status, payload)
        if fault.kind == "reset":
            h.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            h.connection.close()
            h.close_connection = True
            return None
        if fault.kind == "truncated":
            data = json.dumps(payload).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data) + 10))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return None
        if fault.kind == "empty":
            return self._reply(h, 200, raw=b"")
        if fault.kind in ("header_trickle", "body_trickle"):
            return self._trickle(h, status, payload, fault)
        if fault.kind == "mangled":  # the work done, then these bytes as the answer
            sid, token = payload["session_id"].encode(), payload["token"].encode()
            data = fault.body.replace(b"{sid}", sid).replace(b"{token}", token)
            size = str(len(data.rsplit(b"\r\n\r\n", 1)[-1])).encode()
            h.wfile.write(data.replace(b"{len}", size))  # the last body's length
            h.close_connection = True
            return None
        raise AssertionError(f"unknown fault {fault.kind}")

    def _trickle(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        payload: Any,
        fault: Fault,
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        h.close_connection = True
        try:
            if fault.kind == "body_trickle":
                h.wfile.write(head)
                stream = data
            else:
                stream = head + data
            sent = 0
            for byte in stream:
                h.wfile.write(bytes([byte]))
                sent += 1
                time.sleep(fault.delay)
        except OSError:
            pass
        with self.lock:
            self.trickled.append((len(stream), sent))

    def _hostile(self, h: http.server.BaseHTTPRequestHandler, fault: Fault) -> None:
        """Bodies no client should read whole; stops when the client hangs up."""
        h.close_connection = True
        h.send_response(fault.status)
        h.send_header("Connection", "close")
        h.send_header("Content-Type", fault.content_type)
        for name, value in fault.headers:
            h.send_header(name, value)
        try:
            if fault.kind == "raw":
                h.send_header("Content-Length", str(len(fault.body)))
                h.end_headers()
                h.wfile.write(fault.body)
            elif fault.kind == "gzip_bomb":
                bomb = gzip_bomb()
                h.send_header("Content-Encoding", "gzip")
                h.send_header("Content-Length", str(len(bomb)))
                h.end_headers()
                h.wfile.write(bomb)
            elif fault.kind == "huge":
                h.send_header("Content-Length", str(HUGE_BYTES))
                h.end_headers()
                block = b"x" * 65536
                for _ in range(HUGE_BYTES // len(block)):
                    h.wfile.write(block)
            else:  # endless
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                block = b"x" * 65536
                frame = b"%x\r\n" % len(block) + block + b"\r\n"
                for _ in range(ENDLESS_CAP // len(block)):
                    h.wfile.write(frame)
        except OSError:
            return

    def _browser(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        """What a browser asks: the Web SDK's API (CORS as a browser needs it),
        the SDK file and a test page."""
        path = urllib.parse.urlsplit(h.path).path
        origin = h.headers.get("Origin")
        cors = [
            ("Access-Control-Allow-Origin", origin or "*"),
            ("Access-Control-Allow-Headers", "X-Session-Token, Content-Type"),
            ("Access-Control-Allow-Methods", "GET, POST, PATCH, OPTIONS"),
            ("Vary", "Origin"),
        ]
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if method == "OPTIONS":
            return self._reply(h, 204, None, cors)
        if path == "/_test/sdk.js" and self.sdk_file is not None:
            data = self.sdk_file.read_bytes()
            return self._send_browser(h, 200, data, "text/javascript", cors)
        if path == "/_test/page":
            return self._send_browser(h, 200, self.page.encode(), "text/html", cors)
        token = h.headers.get("X-Session-Token")
        with self.lock:
            self.sdk_calls.append(
                {"method": method, "path": path, "token": token, "origin": origin}
            )
            live = {r["token"]: sid for sid, r in self.sessions.items()}
        sid = live.get(token or "")
        if sid is None:
            payload: Any = {"detail": "invalid session token"}
            return self._send_browser(
                h, 401, json.dumps(payload).encode(), "application/json", cors
            )
        if method == "GET" and path == "/_sdk/v0/sessions":
            payload = {
                "id": sid,
                "limited_access_token": f"daily_{sid}",
                "room_url": "https://127.0.0.1:9/room",  # nothing listens: no video here
                "session_config": {"uses_stacked_alpha": False},
            }
        elif method == "POST" and path == "/_sdk/v0/sessions/tasks":
            text = json.loads(raw or b"{}").get("text", "")
            with self.lock:
                self.spoken.append((sid, text))
            payload = {"task_id": f"task_sdk_{len(self.spoken)}"}
        else:
            payload = {"detail": "Not Found"}
            return self._send_browser(
                h, 404, json.dumps(payload).encode(), "application/json", cors
            )
        self._send_browser(
            h, 200, json.dumps(payload).encode(), "application/json", cors
        )

    def _send_browser(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        content_type: str,
        headers: list[tuple[str, str]],
    ) -> None:
        with self.lock:
            self.to_browser.append(data)
        self._reply(h, status, raw=data, headers=headers, content_type=content_type)

    @staticmethod
    def _route(method: str, path: str) -> tuple[str | None, str | None]:
        parts = path.split("/")
        if method == "POST" and path == "/api/v1/sessions":
            return "create", None
        in_sessions = path.startswith("/api/v1/sessions/")
        if method == "POST" and in_sessions and len(parts) == 6 and parts[5] == "tasks":
            return "say", urllib.parse.unquote(parts[4])
        if method == "DELETE" and in_sessions and len(parts) == 5:
            return "terminate", urllib.parse.unquote(parts[4])
        if method == "POST" and path == "/v1/realtime/client_secrets":
            return "openai", None
        if method == "POST" and path == "/access-token":
            return "cartesia", None
        return None, None

    def _work(self, route: str, session_id: str | None, body: Any) -> tuple[int, Any]:
        """Do what the real API does; returns (status, JSON payload)."""
        with self.lock:
            self._n += 1
            n = self._n
            if route == "create":
                engine = (body or {}).get("conversation_engine")
                known = (
                    "openai-realtime",
                    "cartesia",
                    "text-echo",
                    "external",
                    "qwen-omni-realtime",
                )
                if engine is not None and engine.get("type") not in known:
                    return 422, {
                        "detail": [
                            {
                                "type": "union_tag_invalid",
                                "loc": ["body", "conversation_engine"],
                                "msg": "Input tag does not match any of the expected tags",
                                "input": engine,
                            }
                        ]
                    }
                if str((body or {}).get("avatar_id", "")).startswith("retired"):
                    return 410, {"detail": "Avatar no longer exists"}
                sid = self.next_ids.pop(0) if self.next_ids else f"sess_{n}"
                record = {"token": self.token_factory(n), "body": body}
                self.sessions[sid] = record
                self.created[sid] = record
                return 200, {"session_id": sid, "token": record["token"]}
            if route == "say":
                if session_id not in self.sessions:
                    return 404, {"detail": "Session not found"}
                self.spoken.append((session_id, body["text"]))
                return 200, {"task_id": f"task_{n}"}
            if route == "terminate":
                if self.sessions.pop(str(session_id), None) is None:
                    return 404, {"detail": "Session not found"}
                return 204, None
            if route == "openai":
                self.minted_openai.append(body)
                return 200, {
                    "value": f"ek_fake_{n}",
                    "expires_at": 2_000_000_000,
                    "session": body.get("session", {}),
                }
            self.minted_cartesia.append(body)
            return 200, {"token": f"cartesia_tok_{n}"}

    def _reply(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        payload: Any = None,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = (
            raw
            if raw is not None
            else b""
            if payload is None
            else json.dumps(payload).encode()
        )
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-request-id", f"req_{status}")
        for name, value in [*headers, *self.reply_headers]:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)


# --------------------------------------------------------------------------- #
# The fault server: one exchange broken at one phase and byte offset
# --------------------------------------------------------------------------- #

# Where the first exchange breaks: before accepting, in the TLS handshake, after
# N bytes of the request, of the answer's head or of its body. An offset is a
# byte count or a mark the server finds in what it reads or writes.
PHASES = ("accept", "tls", "request", "head", "body")
# What it does there: stall (read on, never answer), cut (close), garble (the
# rest replaced by bytes that are no HTTP), early (answer before reading on).
ACTIONS = ("stall", "cut", "garble", "early")
GARBAGE = b"\x00\xff~garbled~\xfe\x01"


class FaultServer:
    """A raw HTTP/1.1 server on 127.0.0.1 whose first connection breaks as told;
    every later connection is served right (the client's cleanup DELETE).

    The server-side truth: `seen` (bytes of the first request that reached the
    server, counted also for a request left waiting), `created` (the session
    ids it made: a whole create request makes one), `ended` (ids deleted), and
    `id_sent` (whether the first answer's id, closing quote included, was
    written before the fault).
    """

    def __init__(
        self, phase: str, offset: int | str, action: str, context: Any = None
    ) -> None:
        self.phase, self.offset, self.action, self.context = (
            phase,
            offset,
            action,
            context,
        )
        self.seen, self.id_sent = 0, False
        self.created: list[str] = []
        self.ended: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        port = self.listener.getsockname()[1]
        host = "localhost" if context is not None else "127.0.0.1"
        self.url = f"{'https' if context else 'http'}://{host}:{port}"
        self.first: threading.Thread | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop; the server-side truth is final once this returns."""
        self.stop.set()
        if self.phase == "accept" and self.action == "stall":
            self._drain_backlog()
        self.listener.close()
        if self.first is not None:  # the faulted connection's truth is final
            self.first.join(10)

    def _accept(self) -> None:
        first = True
        while not self.stop.is_set():
            if first and self.phase == "accept" and self.action == "stall":
                self.stop.wait()  # never accepted: what waits is counted at close
                return
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            target = self._fault if first else self._serve
            thread = threading.Thread(target=target, args=(conn,), daemon=True)
            self.first, first = self.first or thread, False  # before it runs: close()
            thread.start()  # may come before the next line of this loop

    def _drain_backlog(self) -> None:
        self.listener.settimeout(0.5)
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                self._count(conn.recv(65536))
            conn.close()

    def _count(self, data: bytes) -> bytes:
        with self.lock:
            self.seen += len(data)
        return data

    # -- the first connection: the fault --------------------------------------

    def _fault(self, raw: socket.socket) -> None:
        conn = None
        try:
            conn = self._handshake(raw)
            if conn is not None:
                self._exchange(conn)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                (conn or raw).close()

    def _handshake(self, raw: socket.socket) -> socket.socket | None:
        if self.phase == "accept" and self.action != "early":
            if self.action == "garble":
                raw.sendall(GARBAGE)
                self._hold(raw, count=self.context is None)
            return None  # cut: closed before a byte was read
        if self.context is None:
            return raw
        if self.phase == "tls":
            raw.settimeout(5)
            raw.recv(int(self.offset))  # part of the ClientHello: not the request
            if self.action == "garble":
                raw.sendall(GARBAGE)
            if self.action in ("stall", "garble"):
                self._hold(raw, count=False)
            return None
        return self.context.wrap_socket(raw, server_side=True)

    def _hold(self, conn: socket.socket, count: bool = True) -> None:
        """Read on, never answer, until the client hangs up or the test ends
        (then what already arrived is read too)."""
        conn.settimeout(0.05)
        while True:
            stopping = self.stop.is_set()
            try:
                data = conn.recv(65536)
            except TimeoutError:
                if stopping:
                    return
                continue
            if not data:
                return
            if count:
                self._count(data)

    def _exchange(self, conn: socket.socket) -> None:
        if self.phase == "accept":  # early: the answer before a byte is read
            return self._answer(
                conn, self._reply("POST", "/api/v1/sessions"), early=True
            )
        conn.settimeout(5)
        request = bytearray()
        while not self._reached(request):
            byte = conn.recv(1)
            if not byte:
                return
            request += self._count(byte)
        if self.phase == "request":
            if self.action == "stall":
                return self._hold(conn)
            if self.action == "garble":
                conn.sendall(GARBAGE)
                return self._hold(conn)
            if self.action == "early":
                line = bytes(request).split(b"\r\n", 1)[0].decode("latin-1")
                method, path = (line.split(" ") + ["", ""])[:2]
                return self._answer(
                    conn, self._reply(method or "POST", path or "/"), early=True
                )
            return None  # cut
        return self._answer(conn, self._reply(*self._read_rest(conn, request)))

    def _reached(self, request: bytearray) -> bool:
        if self.phase != "request":
            return self._complete(request)
        if self.offset == "head":
            return b"\r\n\r\n" in request
        if self.offset == "all":
            return self._complete(request)
        return len(request) >= int(self.offset)

    @staticmethod
    def _complete(request: bytearray) -> bool:
        head, sep, body = bytes(request).partition(b"\r\n\r\n")
        if not sep:
            return False
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        return len(body) >= (int(length[1]) if length else 0)

    @staticmethod
    def _read_rest(conn: socket.socket, request: bytearray) -> tuple[str, str]:
        line = bytes(request).split(b"\r\n", 1)[0].decode("latin-1")
        method, path, _ = line.split(" ", 2)
        return method, path

    def _answer(self, conn: socket.socket, answer: bytes, early: bool = False) -> None:
        """Write `answer`, broken at the phase's offset."""
        head_end = answer.index(b"\r\n\r\n") + 4
        if self.phase in ("head", "body"):
            base = 0 if self.phase == "head" else head_end
            mark = self.offset
            if isinstance(mark, str):  # a mark in the answer: stop right after it
                mark = answer.index(mark.encode(), base) + len(mark) - base
            cut = min(base + int(mark), len(answer))
        else:
            cut = len(answer)
        conn.sendall(answer[:cut])
        closing_quote = answer.find(b'"', answer.find(b'"session_id": "') + 15)
        self.id_sent = b'"session_id"' in answer and cut > closing_quote
        if early or self.phase not in ("head", "body"):
            return self._hold(conn) if early else None
        if self.action == "garble":
            conn.sendall(GARBAGE * ((len(answer) - cut) // len(GARBAGE) + 1))
        if self.action in ("stall", "garble"):
            self._hold(conn)

    # -- later connections: served right -------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            request = bytearray()
            while not self.stop.is_set():
                while not self._complete(request):
                    data = conn.recv(65536)
                    if not data:
                        return
                    request += data
                head, _, rest = bytes(request).partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                size = int(length[1]) if length else 0
                request = bytearray(rest[size:])
                conn.sendall(self._reply(*self._read_rest(conn, bytearray(head))))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _reply(self, method: str, path: str) -> bytes:
        """The answer the API would give (the work done: a session made or ended)."""
        status, payload = 404, {"detail": "Not Found"}
        if method == "POST" and path == "/api/v1/sessions":
            with self.lock:
                sid = f"sess_{len(self.created) + 1}"
                self.created.append(sid)
            status, payload = 201, {"session_id": sid, "token": f"TOKEN-SENTINEL-{sid}"}
        elif method == "POST" and path.endswith("/tasks"):
            status, payload = 200, {"task_id": "task_1"}
        elif method == "DELETE" and path.startswith("/api/v1/sessions/"):
            sid = urllib.parse.unquote(path.rsplit("/", 1)[1])
            with self.lock:
                known = sid in self.created and sid not in self.ended
                if known:
                    self.ended.append(sid)
            status, payload = (204, None) if known else (404, {"detail": "Not Found"})
        body = b"" if payload is None else json.dumps(payload).encode()
        phrase = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found"}[
            status
        ]
        head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


if __name__ == "__main__":  # a fake for manual runs: until Ctrl-C
    fake = FakeAvaturn()
    print(f"export AVATURN_API_KEY={KEY} AVATURN_BASE_URL={fake.url}")
    print(f"export OPENAI_API_KEY=sk-fake OPENAI_BASE_URL={fake.url}/v1")
    print(f"export CARTESIA_API_KEY=ck-fake CARTESIA_BASE_URL={fake.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
