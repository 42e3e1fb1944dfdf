"""Tests for avaturn_session, one per promise a user depends on.

Request shapes and status mapping run against `responses` mocks. Every
reliability promise (deadline, retries, caps, keep-alive, fork, warm(), proxies,
secrets) runs on a real socket against `FakeAvaturn` (testing/fake_avaturn.py, a
stdlib server on 127.0.0.1 that the benchmarks use too). The README's snippets
run as a user would run them; the examples run under their frameworks' test
clients and under gunicorn with 4 workers; the browser side runs in headless
Chromium with the real Web SDK; the notebook runs in a real kernel. No test
talks to any other host, sleeps on a clock it could patch, or asserts a timing.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import contextvars
import copy
import datetime
import email.utils
import functools
import html
import importlib
import inspect
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import pytest
import requests
import responses
from responses import matchers

import avaturn_session as av

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "testing"))

from fake_avaturn import KEY, FakeAvaturn, Fault, FaultServer, gzip_bomb

API = "https://api.avaturn.live"
SESSIONS = API + "/api/v1/sessions"
OPENAI_SECRETS = "https://api.openai.com/v1/realtime/client_secrets"


@pytest.fixture
def fake():
    server = FakeAvaturn()
    yield server
    server.close()


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def sleeps(monkeypatch):
    """Record every retry wait instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(av, "_sleep", waits.append)
    return waits


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    """Every test starts without keys, base URLs, proxies, shared clients or
    remembered tokens, and releases the shared clients it built."""
    for name in (
        "AVATURN_API_KEY",
        "AVATURN_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CARTESIA_API_KEY",
        "CARTESIA_BASE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(av, "_processes", {})
    av._SEEN.clear()
    yield
    av.close_shared_clients()


def client_for(fake: FakeAvaturn, **kwargs: Any) -> av.AvaturnClient:
    kwargs.setdefault("timeout", (2.0, 0.3))
    return av.AvaturnClient(KEY, base_url=fake.url, **kwargs)


def app_report(code: str, env: dict[str, str]) -> Any:
    """Run ``code`` in a fresh Python; the JSON report on its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- #
# Public surface
# --------------------------------------------------------------------------- #

TIMEOUT = "timeout: 'float | tuple[float, float] | None' = None"
PER_CALL = f"{TIMEOUT}, deadline: 'float | None' = None"
CREATE_PARAMS = (
    "engine: 'Mapping[str, Any] | None' = None, *, avatar_id: 'str | None' = None, "
    "background: 'str | None' = None, render_model: 'str | None' = None, "
    "user_absent_timeout: 'int | None' = None, max_duration: 'int | None' = None, "
    f"extra: 'Mapping[str, Any] | None' = None, {PER_CALL}"
)
# The functions that forward create_session's options (typed by _CreateOptions).
FORWARDED = (
    "engine: 'Mapping[str, Any] | None' = None, **options: 'Unpack[_CreateOptions]'"
)
READY = f"ready: 'bool' = False, {PER_CALL}"

SIGNATURES = {
    "openai_realtime_engine": "(client_secret: 'str') -> 'dict[str, Any]'",
    "cartesia_engine": "(access_token: 'str', agent_id: 'str') -> 'dict[str, Any]'",
    "text_echo_engine": "(voice_id: 'str') -> 'dict[str, Any]'",
    "external_engine": "(url: 'str', *, headers: 'Mapping[str, str] | None' = None, "
    "user_sample_rate: 'int | None' = None) -> 'dict[str, Any]'",
    "mint_openai_client_secret": "(session: 'Mapping[str, Any] | None' = None, *, "
    "expires_in: 'int' = 600, api_key: 'str | None' = None, base_url: 'str | None' = None, "
    f"{READY}, openai_client: 'Any' = None) -> 'str'",
    "mint_cartesia_access_token": "(*, api_key: 'str | None' = None, expires_in: 'int' = 300, "
    f"base_url: 'str | None' = None, {READY}) -> 'str'",
    "create_session": f"({FORWARDED}) -> 'AvaturnSession'",
    "say": f"(session_id: 'str', text: 'str', *, {PER_CALL}) -> 'str'",
    "terminate_session": f"(session_id: 'str', *, {PER_CALL}) -> 'bool'",
    "session": f"({FORWARDED}) -> 'contextlib.AbstractContextManager[AvaturnSession]'",
    "deadline": "(seconds: 'float') -> 'Iterator[None]'",
    "warm": "(*, deadline: 'float | None' = None) -> 'list[str]'",
    "main": "(argv: 'Sequence[str] | None' = None) -> 'int'",
    "close_shared_clients": "() -> 'None'",
    "AvaturnSession.web_sdk_html": "(self, *, sdk_url: 'str | None' = None, audio: 'bool' = False, "
    "width: 'str' = '100%', height: 'str' = '480px') -> 'str'",
    "AvaturnClient.__init__": "(self, api_key: 'str | None' = None, *, base_url: 'str | None' = None, "
    "timeout: 'float | tuple[float, float]' = (5.0, 30.0), max_retries: 'int' = 2, "
    "http_session: 'requests.Session | None' = None, deadline: 'float' = 60.0) -> 'None'",
    "AvaturnClient.create_session": f"(self, {CREATE_PARAMS}) -> 'AvaturnSession'",
    "AvaturnClient.say": f"(self, session_id: 'str', text: 'str', *, {PER_CALL}) -> 'str'",
    "AvaturnClient.terminate_session": f"(self, session_id: 'str', *, {PER_CALL}) -> 'bool'",
    "AvaturnClient.session": f"(self, {FORWARDED}) -> 'Iterator[AvaturnSession]'",
    "AvaturnClient.close": "(self) -> 'None'",
    "AvaturnClient.warm": "(self, *, deadline: 'float | None' = None) -> 'bool'",
    "AvaturnSession": "(session_id: str, token: str, api_host: str)",
    "AvaturnError": "(message: 'str' = '', fields: 'Mapping[str, Any] | None' = None, /, "
    "**more: 'Any') -> 'None'",
}


def test_public_all_is_frozen():
    assert sorted(av.__all__) == sorted(
        [
            "CLEANUP_GRACE",
            "READY_MIN_LIFE",
            "deadline",
            "DEFAULT_BASE_URL",
            "DEFAULT_DEADLINE",
            "DEFAULT_MAX_RETRIES",
            "DEFAULT_POOL_MAXSIZE",
            "DEFAULT_TIMEOUT",
            "INITIAL_RETRY_DELAY",
            "KEEPALIVE_EXPIRY",
            "MAX_ERROR_BODY_BYTES",
            "MAX_RESPONSE_BYTES",
            "MAX_RETRY_AFTER",
            "MAX_RETRY_DELAY",
            "WEB_SDK_URL",
            "APIConnectionError",
            "APIResponseError",
            "APIStatusError",
            "APITimeoutError",
            "AuthenticationError",
            "AvaturnClient",
            "AvaturnError",
            "AvaturnSession",
            "BadRequestError",
            "ConfigurationError",
            "CredentialError",
            "GoneError",
            "InternalServerError",
            "NotFoundError",
            "PermissionDeniedError",
            "RateLimitError",
            "UnprocessableEntityError",
            "cartesia_engine",
            "close_shared_clients",
            "create_session",
            "external_engine",
            "main",
            "mint_cartesia_access_token",
            "mint_openai_client_secret",
            "openai_realtime_engine",
            "say",
            "session",
            "terminate_session",
            "text_echo_engine",
            "warm",
        ]
    )
    assert all(hasattr(av, name) for name in av.__all__)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_public_signatures_are_frozen(name):
    obj: Any = av
    for part in name.split("."):
        obj = getattr(obj, part)
    assert str(inspect.signature(obj)) == SIGNATURES[name]


def test_public_constants_have_documented_values():
    assert av.DEFAULT_BASE_URL == "https://api.avaturn.live"
    assert av.DEFAULT_TIMEOUT == (5.0, 30.0)
    assert av.DEFAULT_MAX_RETRIES == 2
    assert (av.INITIAL_RETRY_DELAY, av.MAX_RETRY_DELAY, av.MAX_RETRY_AFTER) == (
        0.5,
        8.0,
        60.0,
    )
    assert av.DEFAULT_DEADLINE == 60.0
    assert (av.MAX_RESPONSE_BYTES, av.MAX_ERROR_BODY_BYTES) == (1024 * 1024, 64 * 1024)
    assert av.WEB_SDK_URL.endswith("/@avaturn-live/web-sdk@0.3.7/dist/main.js")
    assert av.KEEPALIVE_EXPIRY == 5.0
    assert (av.CLEANUP_GRACE, av.READY_MIN_LIFE) == (5.0, 0.5)
    assert av.__version__ == "0.4.0"


def test_import_does_not_import_openai():
    code = "import sys, avaturn_session; assert 'openai' not in sys.modules, 'openai imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_errors_hierarchy_matches_contract():
    assert issubclass(av.ConfigurationError, ValueError)
    assert issubclass(av.APITimeoutError, av.APIConnectionError)
    for cls in (av.ConfigurationError, av.CredentialError, av.APIConnectionError):
        assert issubclass(cls, av.AvaturnError)
    for cls in (av.APIResponseError, av.APIStatusError):
        assert issubclass(cls, av.AvaturnError)
    for cls in (
        av.BadRequestError,
        av.AuthenticationError,
        av.PermissionDeniedError,
        av.NotFoundError,
        av.GoneError,
        av.UnprocessableEntityError,
        av.RateLimitError,
        av.InternalServerError,
    ):
        assert issubclass(cls, av.APIStatusError)


# --------------------------------------------------------------------------- #
# The shape of the module: the core never knows the CLI; one home for options
# --------------------------------------------------------------------------- #


def test_import_loads_neither_openai_nor_argparse():
    code = (
        "import sys, avaturn_session; "
        "assert 'openai' not in sys.modules, 'openai'; "
        "assert 'argparse' not in sys.modules, 'argparse'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- #
# Engines
# --------------------------------------------------------------------------- #


def test_openai_realtime_engine_builds_config():
    assert av.openai_realtime_engine("ek_1") == {
        "type": "openai-realtime",
        "client_secret": "ek_1",
    }


def test_cartesia_engine_builds_config():
    assert av.cartesia_engine("tok", "agent_1") == {
        "type": "cartesia",
        "access_token": "tok",
        "agent_id": "agent_1",
    }


def test_text_echo_engine_builds_config():
    assert av.text_echo_engine("v1") == {
        "type": "text-echo",
        "tts": {"engine": "elevenlabs", "voice_id": "v1"},
    }


def test_external_engine_builds_config_with_headers_and_rate():
    headers = {"X-Key": "abc"}
    engine = av.external_engine(
        "wss://bot.example/ws", headers=headers, user_sample_rate=16000
    )
    assert engine == {
        "type": "external",
        "url": "wss://bot.example/ws",
        "headers": {"X-Key": "abc"},
        "audio": {"user": {"sample_rate": 16000}},
    }
    engine["headers"]["X-Key"] = "changed"
    assert headers == {"X-Key": "abc"}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: av.openai_realtime_engine(""), "client_secret"),
        (lambda: av.openai_realtime_engine(None), "client_secret"),
        (lambda: av.cartesia_engine("tok", ""), "agent_id"),
        (lambda: av.cartesia_engine("", "agent"), "access_token"),
        (lambda: av.text_echo_engine(""), "voice_id"),
        (lambda: av.external_engine("https://bot.example/ws"), "ws://"),
        (lambda: av.external_engine("wss://x/ws", headers={"a": 1}), "headers"),
        (
            lambda: av.external_engine("wss://x/ws", user_sample_rate=0),
            "user_sample_rate",
        ),
        (
            lambda: av.external_engine("wss://x/ws", user_sample_rate=True),
            "user_sample_rate",
        ),
    ],
)
def test_engine_helpers_refuse_bad_input(build, match):
    with pytest.raises(av.ConfigurationError, match=match):
        build()


def test_create_session_passes_unknown_engine_type_untouched(mock):
    engine = {
        "type": "qwen-omni-realtime",
        "model": "qwen3-omni",
        "nested": {"list": [1, 2.5, None, True]},
    }
    mock.post(
        SESSIONS,
        match=[matchers.json_params_matcher({"conversation_engine": engine})],
        json={"session_id": "s1", "token": "t1"},
    )
    av.AvaturnClient(KEY).create_session(engine)


def test_create_session_does_not_mutate_callers_dicts(mock):
    engine = {"type": "openai-realtime", "client_secret": "ek_1"}
    extra = {"model": "golf"}
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t1"})
    av.AvaturnClient(KEY).create_session(engine, extra=extra)
    assert engine == {"type": "openai-realtime", "client_secret": "ek_1"}
    assert extra == {"model": "golf"}


# --------------------------------------------------------------------------- #
# Client construction
# --------------------------------------------------------------------------- #


def test_client_reads_key_and_base_url_from_env(monkeypatch, mock):
    monkeypatch.setenv("AVATURN_API_KEY", "env-key")
    monkeypatch.setenv("AVATURN_BASE_URL", "https://staging.example/")
    mock.post(
        "https://staging.example/api/v1/sessions",
        match=[matchers.header_matcher({"Authorization": "Bearer env-key"})],
        json={"session_id": "s1", "token": "t1"},
    )
    client = av.AvaturnClient()
    assert client.base_url == "https://staging.example"
    assert client.create_session().api_host == "https://staging.example"


def test_client_without_key_names_the_variable(no_env):
    with pytest.raises(av.ConfigurationError, match="AVATURN_API_KEY"):
        av.AvaturnClient()


@pytest.mark.parametrize(
    "key", ["a b", "a\nb", "a\r\nX-Evil: 1", "a\tb", "kéy", " sk-leaky"]
)
def test_client_refuses_key_with_whitespace_or_control_chars(key):
    with pytest.raises(av.ConfigurationError) as info:
        av.AvaturnClient(key)
    assert key not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.avaturn.live",
        "http://10.0.0.5:8000",
        "ftp://api.avaturn.live",
        "api.avaturn.live",
        "https://user:pw@api.avaturn.live",
        "https://api.avaturn.live/?x=1",
    ],
)
def test_client_refuses_unsafe_base_url(url):
    with pytest.raises(av.ConfigurationError):
        av.AvaturnClient(KEY, base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000",
        "http://127.0.0.1:9",
        "http://127.1.2.3",
        "http://[::1]:8080/",
    ],
)
def test_client_allows_http_for_loopback(url):
    assert av.AvaturnClient(KEY, base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "timeout", [None, 0, -1, float("nan"), (1.0,), (1.0, None), "5", True]
)
def test_client_refuses_bad_timeout(timeout):
    with pytest.raises(av.ConfigurationError, match="timeout"):
        av.AvaturnClient(KEY, timeout=timeout)


@pytest.mark.parametrize("retries", [-1, 1.5, True, None])
def test_client_refuses_bad_max_retries(retries):
    with pytest.raises(av.ConfigurationError, match="max_retries"):
        av.AvaturnClient(KEY, max_retries=retries)


def test_client_repr_shows_base_url_not_key():
    client = av.AvaturnClient("sk-very-secret", base_url="https://x.example")
    assert repr(client) == "AvaturnClient(base_url='https://x.example')"
    assert "sk-very-secret" not in repr(vars(client))


def test_client_pool_keeps_32_connections_for_32_threads(fake, monkeypatch):
    # however slow a loaded machine is, no connection idles out on either side
    monkeypatch.setattr(av, "KEEPALIVE_EXPIRY", 600.0)
    fake.idle_timeout = 600.0
    rounds = []
    with client_for(fake, timeout=(10.0, 10.0)) as client:
        for _ in range(2):
            started = time.monotonic()
            assert run_threads(32, client.create_session) == []
            rounds.append((round(time.monotonic() - started, 2), fake.connections))
    # the second round found every connection of the first one waiting
    assert fake.connections <= av.DEFAULT_POOL_MAXSIZE == 32, rounds
    assert len(fake.created) == 64


def adapter_of(client: av.AvaturnClient) -> Any:
    """The client's own adapter in this process: its pool is ``idle``."""
    return client._transport.own[os.getpid()].get_adapter(client.base_url)


def test_client_pool_keeps_at_most_32_idle_connections(fake, monkeypatch):
    real, back, conns = av._Adapter.checkin, threading.Barrier(40), []

    def checkin(adapter: Any, conn: Any, answer: Any) -> None:
        conns.append(conn)
        back.wait(10)  # every call holds its connection until all 40 have one
        real(adapter, conn, answer)

    monkeypatch.setattr(av._Adapter, "checkin", checkin)
    with client_for(fake, timeout=(10.0, 10.0)) as client:
        assert run_threads(40, client.create_session) == []
        idle = adapter_of(client).idle
        assert fake.connections == 40 and len(idle) == av.DEFAULT_POOL_MAXSIZE == 32
        assert sum(conn.sock.fileno() == -1 for conn in conns) == 8  # closed


def test_client_pools_a_connection_only_after_its_answer_was_read_whole(
    fake, monkeypatch
):
    client = client_for(fake)
    client.create_session()
    assert len(adapter_of(client).idle) == 1  # read to its end: kept
    monkeypatch.setattr(av, "MAX_RESPONSE_BYTES", 10)  # this answer: over the cap
    fake.script("create", Fault("mangled", body=answer(OK_BODY)))  # keep-alive
    with pytest.raises(av.APIResponseError, match="larger than"):
        client.create_session()
    # the rest of that body was never read: closed at once, never kept (though
    # the check before reuse would find it unusable too)
    assert adapter_of(client).idle == []


def test_client_uses_one_pool_under_a_race_to_build_it(fake, monkeypatch):
    monkeypatch.setattr(av, "KEEPALIVE_EXPIRY", 600.0)  # a loaded machine idles
    fake.idle_timeout = 600.0
    built = []

    def slow() -> requests.Session:
        built.append(1)
        time.sleep(0.05)  # widen the race window
        return real()

    real = av._new_http_session
    monkeypatch.setattr(av, "_new_http_session", slow)
    with client_for(fake, timeout=(10.0, 10.0)) as client:
        client.close()  # the next calls build the pool again, racing
        for _ in range(2):
            assert run_threads(16, client.create_session) == []
    # one pool: the second round reused the first round's 16 connections
    assert built and fake.connections <= 16


def test_client_closes_only_its_own_session():
    closed = []

    class Spy(requests.Session):
        def close(self):
            closed.append(self)
            super().close()

    theirs = Spy()
    with av.AvaturnClient(KEY, http_session=theirs):
        pass
    assert closed == []
    client, ours = av.AvaturnClient(KEY), Spy()
    client._transport.own[os.getpid()] = ours
    with client:
        pass
    assert closed == [ours]
    assert os.getpid() not in client._transport.own  # used again: a new one


@pytest.mark.parametrize("moment", ["before it comes back", "as it is pooled"])
def test_client_close_ends_the_connection_of_a_call_in_flight(
    fake, monkeypatch, moment
):
    client, came_back = client_for(fake), []
    client.create_session()
    adapter = adapter_of(client)
    if moment == "before it comes back":
        real = av._Adapter.checkin

        def checkin(adapter: Any, conn: Any, answer: Any) -> None:
            came_back.append(conn)
            client.close()  # another thread closes the client meanwhile
            real(adapter, conn, answer)

        monkeypatch.setattr(av._Adapter, "checkin", checkin)
    else:

        class Idle(list):
            def append(self, conn: Any) -> None:
                came_back.append(conn)
                client.close()  # between checkin's look and its append
                super().append(conn)

        adapter.idle = Idle(adapter.idle)
    client.create_session()
    assert came_back and came_back[0].sock.fileno() == -1  # closed, not pooled
    monkeypatch.undo()
    assert client.create_session().session_id in fake.sessions  # on a new pool
    assert fake.connections == 2


def test_client_close_never_closes_a_connection_another_call_took(fake, monkeypatch):
    client, taken = client_for(fake), []
    client.create_session()
    adapter = adapter_of(client)

    class Idle(list):
        def append(self, conn: Any) -> None:
            super().append(conn)
            taken.append(self.pop())  # a call on the closed pool takes it at once

    adapter.idle = Idle(adapter.idle)
    real = av._Adapter.checkin

    def checkin(adapter: Any, conn: Any, answer: Any) -> None:
        client.close()  # another thread closes the client meanwhile
        real(adapter, conn, answer)

    monkeypatch.setattr(av._Adapter, "checkin", checkin)
    client.create_session()
    assert taken and taken[0].sock.fileno() != -1  # open for the call that took it
    taken[0].close()


@pytest.mark.parametrize("open_before", [False, True])
def test_warm_connection_expires_on_time(fake, monkeypatch, open_before):
    real, later = av._now, [0.0]
    monkeypatch.setattr(av, "_now", lambda: real() + later[0])
    client = client_for(fake)
    if open_before:  # found open: its idle time counts from its last use
        client.create_session()
        later[0] += av.KEEPALIVE_EXPIRY - 1
        assert client.warm() is True
        later[0] += 2
    else:  # opened now: its idle time counts from now
        assert client.warm() is True
        later[0] += av.KEEPALIVE_EXPIRY + 1
    client.create_session()
    assert fake.connections == 2  # idle past the expiry: replaced, never reused


def test_warm_leaves_no_connection_open_in_a_pool_closed_meanwhile(fake, monkeypatch):
    client, got = client_for(fake), []
    real = av._Conn.__init__

    def opened(conn: Any, *args: Any) -> None:
        real(conn, *args)
        got.append(conn)
        client.close()  # another thread closes the client while warm opens one

    monkeypatch.setattr(av._Conn, "__init__", opened)
    assert client.warm() is True
    assert got and got[0].sock.fileno() == -1


def test_client_close_returns_while_a_call_takes_the_last_connection(fake):
    client = client_for(fake)
    client.create_session()
    adapter = adapter_of(client)

    class Idle(list):
        def pop(self, *args: Any) -> Any:
            super().pop(*args)  # a call in flight took it after close's look
            raise IndexError("pop from empty list")

    adapter.idle = Idle(adapter.idle)
    client.close()
    assert client.create_session().session_id in fake.sessions


def test_client_sends_through_given_requests_session(mock):
    http = requests.Session()
    http.headers["X-Proxy-Tag"] = "t"
    mock.post(
        SESSIONS,
        match=[matchers.header_matcher({"X-Proxy-Tag": "t"}, strict_match=False)],
        json={"session_id": "s1", "token": "t1"},
    )
    av.AvaturnClient(KEY, http_session=http).create_session()
    assert "Authorization" not in http.headers


# --------------------------------------------------------------------------- #
# Request shapes
# --------------------------------------------------------------------------- #


def test_create_session_sends_empty_body_and_headers(mock):
    mock.post(
        SESSIONS,
        match=[
            matchers.json_params_matcher({}),
            matchers.header_matcher(
                {
                    "Authorization": f"Bearer {KEY}",
                    "User-Agent": f"avaturn-session/{av.__version__}",
                    "Content-Type": "application/json",
                    "Accept-Encoding": "identity",
                }
            ),
        ],
        json={"session_id": "s1", "token": "t1"},
    )
    created = av.AvaturnClient(KEY).create_session()
    assert created == av.AvaturnSession("s1", "t1", API)


def test_create_session_sends_only_set_fields(mock):
    engine = av.openai_realtime_engine("ek_1")
    mock.post(
        SESSIONS,
        match=[
            matchers.json_params_matcher(
                {
                    "conversation_engine": engine,
                    "avatar_id": "jane_20240829",
                    "background": "transparent",
                    "render_model": "golf",
                    "user_absent_timeout": 10,
                    "max_duration": 86400,
                    "model": "golf",
                }
            )
        ],
        json={"session_id": "s1", "token": "t1"},
    )
    av.AvaturnClient(KEY).create_session(
        engine,
        avatar_id="jane_20240829",
        background="transparent",
        render_model="golf",
        user_absent_timeout=10,
        max_duration=86400,
        extra={"model": "golf"},
    )


def test_say_posts_text_and_returns_task_id(mock):
    mock.post(
        SESSIONS + "/s1/tasks",
        match=[matchers.json_params_matcher({"text": "Hello!"})],
        json={"task_id": "task_9"},
    )
    assert av.AvaturnClient(KEY).say("s1", "Hello!") == "task_9"


def test_terminate_session_deletes_and_returns_true(mock):
    mock.delete(
        SESSIONS + "/s1",
        match=[
            matchers.header_matcher(
                {"Authorization": f"Bearer {KEY}"}, strict_match=False
            )
        ],
        status=204,
    )
    assert av.AvaturnClient(KEY).terminate_session("s1") is True


@pytest.mark.parametrize("status", [404, 410])
def test_terminate_session_returns_false_when_already_gone(mock, status):
    mock.delete(SESSIONS + "/s1", status=status, json={"detail": "Session not found"})
    assert av.AvaturnClient(KEY).terminate_session("s1") is False


@pytest.mark.parametrize(
    ("session_id", "encoded"),
    [
        ("../x", "..%2Fx"),
        ("a b?c#d", "a%20b%3Fc%23d"),
        ("s.1", "s.1"),
        ("a/b", "a%2Fb"),
    ],
)
def test_session_id_is_encoded_as_one_path_segment(mock, session_id, encoded):
    mock.delete(SESSIONS + "/" + encoded, status=204)
    av.AvaturnClient(KEY).terminate_session(session_id)
    assert mock.calls[0].request.path_url == "/api/v1/sessions/" + encoded


@pytest.mark.parametrize(
    "token", ["</script><script>alert(1)</script>", "a\u2028b<!--", '"; alert(1); "']
)
def test_web_sdk_html_keeps_any_token_inside_its_script(token):
    page = av.AvaturnSession(
        "s</script>", token, "https://api.avaturn.live"
    ).web_sdk_html()
    script = page[page.index('<script type="module">') :]
    assert script.count("</script>") == 1  # only the real end tag
    assert "\u2028" not in page and "<!--" not in script
    config = json.loads(script[script.index("{") : script.index(";\n")])
    assert config["sessionToken"] == token and config["sdkUrl"] == av.WEB_SDK_URL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sdk_url": "javascript:alert(1)"},
        {"sdk_url": "https://[::1"},
        {"width": "100%; background: url(x)"},
        {"height": 480},
        {"audio": "yes"},
    ],
)
def test_web_sdk_html_refuses_bad_options(kwargs):
    with pytest.raises(av.ConfigurationError):
        av.AvaturnSession("s1", "t1", API).web_sdk_html(**kwargs)


def test_repr_html_is_an_iframe_with_microphone_and_no_unescaped_token():
    view = av.AvaturnSession("s1", 'tok"><script>x</script>', API)._repr_html_()
    assert view.startswith("<iframe srcdoc=") and 'allow="microphone; autoplay"' in view
    assert "<script>" not in view and 'tok"' not in view
    assert "tok" in html.unescape(view)


def test_session_web_sdk_options_and_repr_hide_nothing_but_token():
    s = av.AvaturnSession("s1", "tok-secret", "https://api.avaturn.live")
    assert s.web_sdk_options() == {
        "sessionToken": "tok-secret",
        "apiHost": "https://api.avaturn.live",
    }
    assert "tok-secret" not in repr(s) and "tok-secret" not in str(s)
    with pytest.raises(AttributeError):
        s.token = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- #
# Bad input: a clear ConfigurationError, nothing sent
# --------------------------------------------------------------------------- #

BAD_CREATE_OPTIONS = [
    ({"engine": "openai-realtime"}, "mapping"),
    ({"engine": {}}, "type"),
    ({"engine": {"type": ""}}, "type"),
    ({"engine": {"type": 3}}, "type"),
    ({"engine": {"type": "openai-realtime"}}, "client_secret"),
    ({"engine": {"type": "openai-realtime", "client_secret": ""}}, "client_secret"),
    ({"engine": {"type": "cartesia", "access_token": "t"}}, "agent_id"),
    ({"engine": {"type": "cartesia", "agent_id": "a"}}, "access_token"),
    ({"engine": {"type": "text-echo"}}, "voice_id"),
    ({"engine": {"type": "text-echo", "tts": {"voice_id": ""}}}, "voice_id"),
    ({"engine": {"type": "new-kind", "x": object()}}, "JSON"),
    ({"engine": {"type": "new-kind", "x": float("nan")}}, "JSON"),
    ({"background": "blue"}, "background"),
    ({"avatar_id": ""}, "avatar_id"),
    ({"render_model": 5}, "render_model"),
    ({"user_absent_timeout": 9}, "user_absent_timeout"),
    ({"user_absent_timeout": 30.0}, "user_absent_timeout"),
    ({"user_absent_timeout": True}, "user_absent_timeout"),
    ({"max_duration": 59}, "max_duration"),
    ({"max_duration": 86401}, "max_duration"),
    ({"max_duration": False}, "max_duration"),
    ({"extra": {"avatar_id": "x"}}, "avatar_id"),
    ({"extra": {"conversation_engine": {}}}, "engine"),
    ({"extra": {"x": {1, 2}}}, "JSON"),
    ({"extra": ["model"]}, "mapping"),
]


@pytest.mark.parametrize(("options", "match"), BAD_CREATE_OPTIONS)
def test_create_session_refuses_bad_input_before_sending(mock, options, match):
    with pytest.raises(av.ConfigurationError, match=match):
        av.AvaturnClient(KEY).create_session(**options)
    assert len(mock.calls) == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.say("", "hi"), "session_id"),
        (lambda c: c.say(None, "hi"), "session_id"),
        (lambda c: c.say("s1", ""), "text"),
        (lambda c: c.say("s1", "   "), "text"),
        (lambda c: c.say("s1", b"hi"), "text"),
        (lambda c: c.terminate_session(""), "session_id"),
        (lambda c: c.terminate_session(42), "session_id"),
        (lambda c: c.terminate_session(".."), "session_id"),
        (lambda c: c.say(".", "hi"), "session_id"),
    ],
)
def test_say_and_terminate_refuse_bad_input_before_sending(mock, call, match):
    with pytest.raises(av.ConfigurationError, match=match):
        call(av.AvaturnClient(KEY))
    assert len(mock.calls) == 0


DEEP_ENGINE: dict[str, Any] = {"leaf": 1}
for _ in range(100_000):
    DEEP_ENGINE = {"x": DEEP_ENGINE}
DEEP_ENGINE = {"type": "custom", "nested": DEEP_ENGINE}

HOSTILE_INPUTS = {
    "base_url ws://[": lambda: av.AvaturnClient(KEY, base_url="ws://["),
    "base_url https://[::1": lambda: av.AvaturnClient(KEY, base_url="https://[::1"),
    "base_url bad port": lambda: av.AvaturnClient(
        KEY, base_url="https://h.example:99999"
    ),
    "base_url with a newline": lambda: av.AvaturnClient(
        KEY, base_url="https://h.example/\n"
    ),
    "base_url not a str": lambda: av.AvaturnClient(KEY, base_url=b"https://h.example"),
    "external url ws://[": lambda: av.external_engine("ws://["),
    "headers as a list": lambda: av.external_engine(
        "wss://e.example", headers=["ab", "cd"]
    ),
    "headers with an int": lambda: av.external_engine(
        "wss://e.example", headers={"a": 1}
    ),
    "header with CRLF": lambda: av.external_engine(
        "wss://e.example", headers={"a": "b\r\nc: d"}
    ),
    "engine headers a list": lambda: av.AvaturnClient(KEY).create_session(
        {"type": "external", "url": "wss://e.example", "headers": ["ab"]}
    ),
    "huge user_absent_timeout": lambda: av.AvaturnClient(KEY).create_session(
        user_absent_timeout=10**5000
    ),
    "huge int in extra": lambda: av.AvaturnClient(KEY).create_session(
        extra={"n": 10**5000}
    ),
    "huge expires_in": lambda: av.mint_cartesia_access_token(
        api_key="ck", expires_in=10**5000
    ),
    "timeout overflows": lambda: av.AvaturnClient(KEY, timeout=1e300),
    "read timeout overflows": lambda: av.AvaturnClient(KEY, timeout=(1.0, 1e300)),
    "timeout NaN": lambda: av.AvaturnClient(KEY, timeout=float("nan")),
    "deadline infinite": lambda: av.AvaturnClient(KEY, deadline=float("inf")),
    "deadline zero": lambda: av.AvaturnClient(KEY, deadline=0),
    "deadline a string": lambda: av.mint_cartesia_access_token(
        api_key="ck", deadline="5"
    ),
    "lone surrogate session id": lambda: av.AvaturnClient(KEY).terminate_session(
        "s\ud800"
    ),
    "lone surrogate text": lambda: av.AvaturnClient(KEY).say("s1", "hi \udc00"),
    "lone surrogate avatar": lambda: av.AvaturnClient(KEY).create_session(
        avatar_id="\ud800"
    ),
    "lone surrogate in engine": lambda: av.AvaturnClient(KEY).create_session(
        {"type": "custom", "prompt": "a\ud800"}
    ),
    "engine 100000 deep": lambda: av.AvaturnClient(KEY).create_session(DEEP_ENGINE),
    "openai session 100000 deep": lambda: av.mint_openai_client_secret(
        DEEP_ENGINE, openai_client=FakeOpenAI()
    ),
    "openai key with a newline": lambda: av.mint_openai_client_secret(
        api_key="sk-abc\n"
    ),
    "cartesia key with a newline": lambda: av.mint_cartesia_access_token(
        api_key="ck-abc\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_INPUTS))
def test_any_bad_input_is_a_configuration_error_before_sending(mock, name):
    with pytest.raises(av.ConfigurationError) as info:
        HOSTILE_INPUTS[name]()
    assert isinstance(info.value, ValueError)
    assert len(mock.calls) == 0
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "\n" not in str(info.value)


def test_openai_key_from_env_with_newline_is_refused_before_the_sdk(mock, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-a-secrets-file\n")
    with pytest.raises(av.ConfigurationError, match="whitespace") as info:
        av.mint_openai_client_secret()
    assert "sk-from-a-secrets-file" not in str(info.value)


# --------------------------------------------------------------------------- #
# Status codes -> exceptions, messages, redaction
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, av.BadRequestError),
        (401, av.AuthenticationError),
        (403, av.PermissionDeniedError),
        (404, av.NotFoundError),
        (409, av.APIStatusError),
        (410, av.GoneError),
        (422, av.UnprocessableEntityError),
        (429, av.RateLimitError),
        (500, av.InternalServerError),
        (502, av.InternalServerError),
        (503, av.InternalServerError),
        (504, av.InternalServerError),
    ],
)
def test_status_maps_to_exception_class(mock, status, cls):
    mock.post(
        SESSIONS,
        status=status,
        json={"detail": "nope"},
        headers={"x-request-id": "req_7"},
    )
    with pytest.raises(av.APIStatusError) as info:
        av.AvaturnClient(KEY, max_retries=0).create_session()
    error = info.value
    assert type(error) is cls
    assert (error.status_code, error.request_id, error.detail) == (
        status,
        "req_7",
        "nope",
    )
    assert (error.method, error.path) == ("POST", "/api/v1/sessions")


def test_status_error_str_renders_fastapi_detail(mock):
    detail = [
        {
            "type": "missing",
            "loc": ["body", "conversation_engine", "agent_id"],
            "msg": "Field required",
        },
        {
            "type": "greater_than_equal",
            "loc": ["body", "max_duration"],
            "msg": "too small",
        },
    ]
    mock.post(
        SESSIONS, status=422, json={"detail": detail}, headers={"x-request-id": "req_1"}
    )
    with pytest.raises(av.UnprocessableEntityError) as info:
        av.AvaturnClient(KEY).create_session()
    assert str(info.value) == (
        "422 Unprocessable Entity (request req_1): "
        "conversation_engine.agent_id: Field required; max_duration: too small"
    )
    assert info.value.errors == detail


MAY_HAVE_CREATED = (
    "a session may have been created (it ends by itself after user_absent_timeout)"
)


def test_status_error_str_without_request_id_or_body(mock):
    mock.post(SESSIONS, status=500, body="")
    with pytest.raises(av.InternalServerError) as info:
        av.AvaturnClient(KEY, max_retries=0).create_session()
    # a 500 may come after the work was done: the error says what that means
    assert str(info.value) == "500 Internal Server Error; " + MAY_HAVE_CREATED
    assert info.value.request_id is None


def test_status_error_from_html_page_is_one_readable_line(mock):
    page = (
        "<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
    )
    mock.post(SESSIONS, status=502, body=page, content_type="text/html")
    with pytest.raises(av.InternalServerError) as info:
        av.AvaturnClient(KEY).create_session()
    assert (
        str(info.value) == "502 Bad Gateway: 502 Bad Gateway nginx; " + MAY_HAVE_CREATED
    )


def test_status_error_redacts_echoed_secrets(mock):
    engine = av.openai_realtime_engine("ek_ECHOED_SECRET")
    echoed = {
        "detail": [
            {
                "type": "value_error",
                "loc": ["body", "conversation_engine"],
                "msg": f"bad secret ek_ECHOED_SECRET for key {KEY}",
                "input": engine,
            }
        ]
    }
    mock.post(SESSIONS, status=422, json=echoed)
    with pytest.raises(av.UnprocessableEntityError) as info:
        av.AvaturnClient(KEY).create_session(engine)
    error = info.value
    for text in (
        str(error),
        repr(error),
        repr(error.detail),
        repr(error.errors),
        repr(error.body),
    ):
        assert "ek_ECHOED_SECRET" not in text
        assert KEY not in text
    assert error.errors[0]["input"] == {
        "type": "openai-realtime",
        "client_secret": "***",
    }
    assert "bad secret *** for key ***" in str(error)


# Credentials under the names engines and providers use, in any spelling.
SECRET_NAMES = (
    "accessToken",
    "clientSecret",
    "auth_token",
    "refresh_token",
    "xi_api_key",
)


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_status_error_masks_an_echoed_credential_under_any_usual_name(mock, name):
    mock.post(SESSIONS, status=422, json={"detail": "bad", "input": {name: "CRED-1"}})
    with pytest.raises(av.UnprocessableEntityError) as info:
        av.AvaturnClient(KEY).create_session()
    assert info.value.body == {"detail": "bad", "input": {name: "***"}}
    assert "CRED-1" not in repr(info.value)


# Bad input beside a credential: raised before anything is sent, from frames
# that hold the credential masked (the caller's own dict, as create_session's
# `engine`, is the caller's: Sentry shows what the caller passed).
BAD_BESIDE_A_SECRET = {
    "a bad option": {"user_absent_timeout": 5},
    "NaN": {"extra": {"x": float("nan")}},
    "a date": {"extra": {"x": datetime.date(2026, 1, 1)}},
    "a set": {"extra": {"x": {1, 2}}},
    "nesting too deep": {
        "extra": {"x": functools.reduce(lambda a, _: [a], range(99), [])}
    },
    "a key that is no string": {"extra": {("x",): 1}},
}


@pytest.mark.parametrize("name", sorted(BAD_BESIDE_A_SECRET))
@pytest.mark.parametrize("field", ["client_secret", *SECRET_NAMES])
def test_bad_input_is_refused_from_frames_that_hold_no_plain_secret(mock, name, field):
    engine = {"type": "openai-realtime", "client_secret": "ek_x", field: "CRED-2"}
    with pytest.raises(av.ConfigurationError) as info:
        av.AvaturnClient(KEY).create_session(engine, **BAD_BESIDE_A_SECRET[name])
    for text in frames_locals(info.value):
        assert "CRED-2" not in text, text
    assert "CRED-2" not in str(info.value) + repr(info.value)


def test_status_error_redacts_external_engine_headers(mock):
    engine = av.external_engine("wss://bot.example/ws", headers={"X-Api": "hdr-SECRET"})
    mock.post(
        SESSIONS,
        status=400,
        json={"detail": "rejected header hdr-SECRET", "input": engine},
    )
    with pytest.raises(av.BadRequestError) as info:
        av.AvaturnClient(KEY).create_session(engine)
    assert "hdr-SECRET" not in repr(info.value.body) + str(info.value)


@pytest.mark.parametrize(
    ("payload", "match", "ended"),
    [
        (b"<html>ok</html>", "not a JSON object", None),
        (b"[1, 2]", "not a JSON object", None),
        (b'{"session_id": "s1"}', "'token'", "s1"),
        (b'{"token": "t1"}', "'session_id'", None),
        (b'{"session_id": 5, "token": "t1"}', "'session_id'", "5"),
        (b'{"session_id": "", "token": "t1"}', "'session_id'", None),
        (b'{"session_id": true, "token": "t1"}', "'session_id'", None),
    ],
)
def test_create_session_unusable_2xx_ends_any_session_it_names(
    mock, payload, match, ended
):
    mock.post(SESSIONS, body=payload)
    if ended is not None:
        mock.delete(f"{SESSIONS}/{ended}", status=204)
    with pytest.raises(av.APIResponseError, match=match) as info:
        av.AvaturnClient(KEY).create_session()
    assert info.value.session_id is None


def test_create_session_without_token_terminates_it_and_says_so_if_it_cannot(
    mock, sleeps
):
    mock.post(SESSIONS, json={"session_id": "s1"})
    mock.delete(SESSIONS + "/s1", status=400)
    with pytest.raises(av.APIResponseError) as info:
        av.AvaturnClient(KEY).create_session()
    assert info.value.session_id == "s1"


def test_redirect_is_not_followed(mock):
    mock.post(SESSIONS, status=307, headers={"Location": "https://evil.example/steal"})
    with pytest.raises(av.APIResponseError, match="redirect") as info:
        av.AvaturnClient(KEY).create_session()
    assert info.value.status_code == 307
    assert len(mock.calls) == 1


def test_say_response_without_task_id_raises(mock):
    mock.post(SESSIONS + "/s1/tasks", json={"ok": True})
    with pytest.raises(av.APIResponseError, match="task_id"):
        av.AvaturnClient(KEY).say("s1", "hi")


# --------------------------------------------------------------------------- #
# Any server answer maps to a typed error
# --------------------------------------------------------------------------- #

DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEPISH_JSON = b'{"detail": ' + b"[" * 900 + b"]" * 900 + b"}"
HOSTILE_BODIES = {
    "loc null": (b'{"detail": [{"loc": null, "msg": "bad"}]}', "application/json"),
    "loc number": (b'{"detail": [{"loc": 5, "msg": "bad"}]}', "application/json"),
    "loc mixed": (
        b'{"detail": [{"loc": ["body", 0, null], "msg": {"a": 1}}]}',
        "application/json",
    ),
    "detail numbers": (b'{"detail": [1, 2, 3]}', "application/json"),
    "nested 100000 deep": (DEEP_JSON, "application/json"),
    "nested 900 deep": (DEEPISH_JSON, "application/json"),
    "non-UTF-8": (b"\xff\xfe\xfa not text \x80\x81", "application/json"),
    "JSON labelled HTML": (b'{"detail": "labelled html"}', "text/html"),
    "HTML labelled JSON": (b"<html><b>oops</b></html>", "application/json"),
    "huge integer": (b'{"detail": ' + b"9" * 5000 + b"}", "application/json"),
    "JSON null": (b"null", "application/json"),
    "JSON string": (b'"just a string"', "application/json"),
    "empty": (b"", "application/json"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize("status", [200, 422, 503])
def test_any_answer_maps_to_a_typed_error(fake, sleeps, name, status):
    body, content_type = HOSTILE_BODIES[name]
    fake.script(
        "create",
        *[Fault("raw", status=status, body=body, content_type=content_type)] * 3,
    )
    try:
        client_for(fake).create_session()
    except av.AvaturnError as exc:
        error = exc
    else:
        pytest.fail("no error")
    expected = av.APIResponseError if status == 200 else av.APIStatusError
    assert isinstance(error, expected), repr(error)
    text = str(error) + repr(error)
    assert len(str(error)) < 700
    assert "\x1b" not in text


# --------------------------------------------------------------------------- #
# Exceptions survive pickling (celery, multiprocessing, ProcessPoolExecutor)
# --------------------------------------------------------------------------- #

ERROR_SAMPLES = [
    av.AvaturnError("root"),
    av.ConfigurationError("bad input"),
    av.CredentialError("openai: nope", provider="openai"),
    av.APIConnectionError(
        "POST /x failed", method="POST", path="/x", request_sent=True
    ),
    av.APITimeoutError(
        "POST /x timed out", method="POST", path="/x", request_sent=False
    ),
    av.APIResponseError(
        "no token", status_code=200, method="POST", path="/x", session_id="s1"
    ),
    *[
        cls(
            f"{status} x (request req_1): x: m",
            status_code=status,
            detail=[{"loc": ["body", "x"], "msg": "m"}],
            request_id="req_1",
            method="DELETE",
            path="/api/v1/sessions/s1",
            body={"detail": "d"},
            retry_after=2.5,
        )
        for cls, status in [
            (av.APIStatusError, 409),
            (av.BadRequestError, 400),
            (av.AuthenticationError, 401),
            (av.PermissionDeniedError, 403),
            (av.NotFoundError, 404),
            (av.GoneError, 410),
            (av.UnprocessableEntityError, 422),
            (av.RateLimitError, 429),
            (av.InternalServerError, 502),
        ]
    ],
]


@pytest.mark.parametrize("error", ERROR_SAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("how", ["pickle", "copy"])
def test_errors_round_trip_through_pickle_and_copy(error, how):
    clone = pickle.loads(pickle.dumps(error)) if how == "pickle" else copy.copy(error)
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_every_public_error_class_has_a_pickling_sample():
    public = {
        getattr(av, name)
        for name in av.__all__
        if isinstance(getattr(av, name), type)
        and issubclass(getattr(av, name), Exception)
    }
    assert public == {type(e) for e in ERROR_SAMPLES}


def raise_rate_limit() -> None:
    raise av.RateLimitError(
        "429 Too Many Requests (request req_9): slow down",
        status_code=429,
        detail="slow down",
        request_id="req_9",
        method="POST",
        path="/api/v1/sessions",
        retry_after=3.0,
    )


def test_error_raised_in_a_process_pool_arrives_typed():
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(raise_rate_limit)
        with pytest.raises(av.RateLimitError) as info:
            future.result(timeout=60)
    assert info.value.retry_after == 3.0
    assert str(info.value) == "429 Too Many Requests (request req_9): slow down"


# --------------------------------------------------------------------------- #
# Retries
# --------------------------------------------------------------------------- #

CALLS = {
    "create": ("POST", SESSIONS, lambda c: c.create_session()),
    "say": ("POST", SESSIONS + "/s1/tasks", lambda c: c.say("s1", "hi")),
    "terminate": ("DELETE", SESSIONS + "/s1", lambda c: c.terminate_session("s1")),
}


@pytest.mark.parametrize("op", ["create", "say", "terminate"])
def test_retry_succeeds_after_transient_503(mock, sleeps, op):
    method, url, call = CALLS[op]
    mock.add(method, url, status=503)
    payload = {"create": {"session_id": "s1", "token": "t"}, "say": {"task_id": "k"}}
    mock.add(method, url, json=payload.get(op, {}))
    call(av.AvaturnClient(KEY))
    assert len(mock.calls) == 2


# The retry rules as one table; the README's retry table is checked against it.
# (the README's words for the failure, faults that produce it, POST retried?,
# DELETE retried?) Every fault runs on the real socket for create, say, terminate.
RETRY_TABLE = [
    (
        "not one byte of the request written (refused, DNS, connect or TLS failure)",
        ["refused"],
        True,
        True,
    ),
    ("429, 503 (honouring `Retry-After`)", ["429", "503"], True, True),
    (
        "read timeout, reset after sending, cut-off or garbled answer",
        ["late", "reset", "truncated"],
        False,
        True,
    ),
    ("500, 502, 504", ["500", "502", "504"], False, True),
    (
        "400, 401, 403, 409, 422, a redirect",
        ["400", "401", "403", "409", "422", "redirect"],
        False,
        False,
    ),
]
# One fault per name, shared by the retry table and the fault matrix.
FAULTS = {
    "429": Fault("status", 429, retry_after="0"),
    "503": Fault("status", 503),
    "late": Fault("late", delay=0.6),
    "reset": Fault("reset"),
    "html": Fault("html"),
    "truncated": Fault("truncated"),
    "empty": Fault("empty"),
    "redirect": Fault("redirect"),
    **{
        code: Fault("status", int(code))
        for code in ("400", "401", "403", "409", "422", "500", "502", "504")
    },
}


@pytest.mark.parametrize(
    ("fault", "op", "retried"),
    [
        (fault, op, post if op != "terminate" else delete)
        for _, faults, post, delete in RETRY_TABLE
        for fault in faults
        for op in ("create", "say", "terminate")
    ],
)
def test_retry_rules_on_real_socket(fake, sleeps, fault, op, retried):
    setup = client_for(fake)
    sid = setup.create_session().session_id
    before = fake.attempts[op]
    if fault == "refused":
        client = av.AvaturnClient(KEY, base_url=closed_port_url(), timeout=(2.0, 0.3))
    else:
        client = setup
        fake.script(op, *[FAULTS[fault]] * 3)
    run = {
        "create": client.create_session,
        "say": lambda: client.say(sid, "once"),
        "terminate": lambda: client.terminate_session(sid),
    }[op]
    with pytest.raises(av.AvaturnError):
        run()
    attempts = 3 if retried else 1
    if fault == "refused":
        assert len(sleeps) == attempts - 1
    else:
        assert fake.attempts[op] - before == attempts
    assert Counter(fake.spoken)[(sid, "once")] <= 1


def test_design_notes_retry_table_matches_the_rules():
    readme = (ROOT / "docs" / "design.md").read_text()
    section = readme[
        readme.index("| failure | create, say (POST) | terminate (DELETE) |") :
    ]
    rows = []
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        label, post, delete = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((label, post == "retried", delete == "retried"))
    assert rows == [(label, post, delete) for label, _, post, delete in RETRY_TABLE]


@pytest.mark.parametrize(
    ("retries_done", "jitter", "retry_after", "delay"),
    [
        (0, 0.0, None, 0.5),
        (1, 0.0, None, 1.0),
        (2, 0.0, None, 2.0),
        (3, 0.0, None, 4.0),
        (4, 0.0, None, 8.0),
        (5, 0.0, None, 8.0),
        (0, 1.0, None, 0.375),
        (4, 1.0, None, 6.0),
        (0, 0.0, 0.0, 0.5),  # Retry-After: 0 still gets the backoff, never a hot loop
        (0, 1.0, 0.0, 0.375),
        (0, 0.0, 3.0, 3.0),  # the server's longer wait wins
        (3, 0.0, 1.0, 4.0),  # the backoff, when longer, wins
    ],
)
def test_retry_delay_doubles_to_cap_with_jitter(
    monkeypatch, retries_done, jitter, retry_after, delay
):
    monkeypatch.setattr(av, "_random", lambda: jitter)
    assert av._retry_delay(retries_done, retry_after) == pytest.approx(delay)


def test_retry_waits_grow_exponentially(mock, sleeps, monkeypatch):
    monkeypatch.setattr(av, "_random", lambda: 0.0)
    for _ in range(5):
        mock.delete(SESSIONS + "/s1", status=502)
    with pytest.raises(av.InternalServerError):
        av.AvaturnClient(KEY, max_retries=4).terminate_session("s1")
    assert sleeps == [0.5, 1.0, 2.0, 4.0]


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        (email.utils.formatdate(NOW + 7, usegmt=True), 7.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds_and_http_date(header, seconds):
    assert av._parse_retry_after(header, now=NOW) == seconds


def test_retry_after_seconds_is_honoured(mock, sleeps):
    mock.post(SESSIONS, status=429, headers={"Retry-After": "2"})
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    av.AvaturnClient(KEY).create_session()
    assert sleeps == [2.0]


def test_retry_after_http_date_is_honoured(mock, sleeps):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    mock.post(SESSIONS, status=503, headers={"Retry-After": when})
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    av.AvaturnClient(KEY).create_session()
    assert 25 < sleeps[0] <= 30


def test_retry_after_over_limit_raises_at_once(mock, sleeps):
    mock.post(SESSIONS, status=429, headers={"Retry-After": "120"})
    with pytest.raises(av.RateLimitError) as info:
        av.AvaturnClient(KEY).create_session()
    assert info.value.retry_after == 120.0
    assert sleeps == []
    assert len(mock.calls) == 1


def test_logging_one_debug_line_per_attempt_and_warning_per_retry(mock, sleeps, caplog):
    caplog.set_level(logging.DEBUG, logger="avaturn_session")
    mock.delete(SESSIONS + "/s1", status=503)
    mock.delete(SESSIONS + "/s1", status=204)
    av.AvaturnClient(KEY).terminate_session("s1")
    records = [r for r in caplog.records if r.name == "avaturn_session"]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(debug) == 2
    assert re.fullmatch(
        r"DELETE /api/v1/sessions/s1 -> 503 Service Unavailable in [\d.]+ ms \(attempt 1\)",
        debug[0],
    )
    assert re.fullmatch(
        r"DELETE /api/v1/sessions/s1 -> 204 No Content in [\d.]+ ms \(attempt 2\)",
        debug[1],
    )
    assert len(warnings) == 1
    assert "503 Service Unavailable" in warnings[0] and "retry 1 of 2" in warnings[0]


# --------------------------------------------------------------------------- #
# Lost answers: the fault matrix (what the server did vs what the caller was told)
# --------------------------------------------------------------------------- #

# (op, fault) -> (outcome, attempts at the server). outcome is an exception
# class, or "ok" (the call returned normally).
FAULT_MATRIX = {
    ("create", "429"): ("ok", 2),
    ("create", "503"): ("ok", 2),
    ("create", "500"): (av.InternalServerError, 1),
    ("create", "late"): (av.APITimeoutError, 1),
    ("create", "reset"): (av.APIConnectionError, 1),
    ("create", "html"): (av.InternalServerError, 1),
    ("create", "truncated"): (av.APIConnectionError, 1),
    ("create", "empty"): (av.APIResponseError, 1),
    ("create", "redirect"): (av.APIResponseError, 1),
    ("say", "429"): ("ok", 2),
    ("say", "503"): ("ok", 2),
    ("say", "500"): (av.InternalServerError, 1),
    ("say", "late"): (av.APITimeoutError, 1),
    ("say", "reset"): (av.APIConnectionError, 1),
    ("say", "html"): (av.InternalServerError, 1),
    ("say", "truncated"): (av.APIConnectionError, 1),
    ("say", "empty"): (av.APIResponseError, 1),
    ("say", "redirect"): (av.APIResponseError, 1),
    ("terminate", "429"): ("ok", 2),
    ("terminate", "503"): ("ok", 2),
    ("terminate", "500"): ("ok", 2),
    ("terminate", "late"): ("ok", 2),
    ("terminate", "reset"): ("ok", 2),
    ("terminate", "html"): ("ok", 2),
    ("terminate", "truncated"): ("ok", 2),
    ("terminate", "empty"): ("ok", 1),
    ("terminate", "redirect"): (av.APIResponseError, 1),
}


@pytest.mark.parametrize(("op", "fault"), sorted(FAULT_MATRIX))
def test_fault_matrix_on_real_socket(fake, sleeps, op, fault):
    client = client_for(fake)
    held: set[str] = set()
    if op != "create":
        held.add(client.create_session().session_id)
    sid = next(iter(held), "")
    fake.script(op, FAULTS[fault])
    expected, attempts = FAULT_MATRIX[(op, fault)]
    run = {
        "create": lambda: client.create_session(extra={"ref": 1}),
        "say": lambda: client.say(sid, "only once"),
        "terminate": lambda: client.terminate_session(sid),
    }[op]
    try:
        result = run()
    except av.AvaturnError as exc:
        assert type(exc) is expected, repr(exc)
    else:
        assert expected == "ok"
        if op == "create":
            held.add(result.session_id)
        if op == "terminate":
            assert result is True  # this call (or its lost first attempt) ended it
            held.discard(sid)
    assert fake.attempts[op] == attempts
    # server-side truth agrees with what the caller was told
    refs = [s["body"].get("ref") for s in fake.created.values() if s["body"]]
    assert refs.count(1) <= 1, "a create was replayed"
    assert Counter(fake.spoken)[(sid, "only once")] <= 1, "a text was spoken twice"
    lost = set(fake.sessions) - held
    if lost:
        assert op == "create" and fault in ("late", "reset", "truncated", "empty")
        assert len(lost) == 1
    if op == "terminate" and expected == "ok":
        assert sid not in fake.sessions


@pytest.mark.parametrize("op", ["create", "say", "terminate"])
def test_retry_after_forms_on_real_socket(fake, sleeps, op):
    client = client_for(fake)
    sid = client.create_session().session_id if op != "create" else ""
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    fake.script(
        op,
        Fault("status", 429, retry_after="3"),
        Fault("status", 503, retry_after=when),
    )
    run = {
        "create": client.create_session,
        "say": lambda: client.say(sid, "hi"),
        "terminate": lambda: client.terminate_session(sid),
    }[op]
    run()
    assert fake.attempts[op] == 3
    assert sleeps[0] == 3.0
    assert 15 < sleeps[1] <= 20


def test_connection_refused_is_retried_for_every_call(sleeps):
    client = av.AvaturnClient(KEY, base_url=closed_port_url())
    for call in (
        client.create_session,
        lambda: client.say("s1", "hi"),
        lambda: client.terminate_session("s1"),
    ):
        sleeps.clear()
        with pytest.raises(av.APIConnectionError) as info:
            call()
        assert info.value.request_sent is False
        assert len(sleeps) == 2  # three attempts, none reached a server


def test_read_timeout_on_real_socket_is_timeout_error_and_not_replayed(fake, sleeps):
    fake.script("create", Fault("late", delay=0.8))
    client = client_for(fake, timeout=(2.0, 0.2))
    with pytest.raises(av.APITimeoutError) as info:
        client.create_session()
    assert info.value.request_sent is True
    assert fake.attempts["create"] == 1


def test_wrong_key_gets_authentication_error_from_fake(fake):
    with pytest.raises(av.AuthenticationError, match="401 Unauthorized"):
        av.AvaturnClient("wrong-key", base_url=fake.url).create_session()


def test_fake_rejects_unknown_engine_with_fastapi_422(fake):
    with pytest.raises(av.UnprocessableEntityError) as info:
        client_for(fake).create_session({"type": "bogus", "client_secret": "ek_zzz"})
    assert info.value.errors[0]["input"] == {"type": "bogus", "client_secret": "***"}


def test_fake_retired_avatar_is_gone_error(fake):
    with pytest.raises(av.GoneError):
        client_for(fake).create_session(avatar_id="retired_2023")


# --------------------------------------------------------------------------- #
# The total deadline of one call
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["header_trickle", "body_trickle"])
def test_deadline_ends_a_trickling_answer(fake, sleeps, kind):
    # One byte every 50 ms never trips a 2 s read timeout: without a total
    # deadline this say would succeed after a few seconds.
    client = client_for(fake, timeout=(2.0, 2.0), deadline=0.3)
    held = client.create_session()
    fake.script("say", Fault(kind, delay=0.05))
    with pytest.raises(av.APITimeoutError, match="deadline") as info:
        client.say(held.session_id, "hi")
    assert info.value.request_sent is True
    assert fake.attempts["say"] == 1
    # server-side truth: the client hung up mid-trickle (at 0.3 s, some 6 of
    # the ~20 to ~120 bytes), not once the headers or the body were complete
    wait_for(lambda: fake.trickled)
    total, sent = fake.trickled[0]
    assert sent < total // 2, (sent, total)


def test_deadline_bounds_retries_of_a_slow_server(fake, sleeps):
    # Every attempt times out after its 0.2 s read timeout; ten retries would
    # take 2.2 s. The 0.5 s deadline stops the loop long before.
    fake.script("terminate", *[Fault("late", delay=0.4)] * 11)
    client = client_for(fake, timeout=(2.0, 0.2), max_retries=10, deadline=0.5)
    with pytest.raises(av.APITimeoutError):
        client.terminate_session("sess_x")
    assert fake.attempts["terminate"] < 11


def wait_for(condition: Any, limit: float = 10.0) -> None:
    """Wait until the fake's handler thread has recorded something."""
    stop = time.monotonic() + limit
    while not condition() and time.monotonic() < stop:
        time.sleep(0.01)


class FakeClock:
    """`_now` and `_sleep` on a clock that only moves when the library waits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        monkeypatch.setattr(av, "_now", lambda: self.now)
        monkeypatch.setattr(av, "_sleep", self.sleep)
        monkeypatch.setattr(av, "_random", lambda: 0.0)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_deadline_raises_at_once_when_retry_after_would_cross_it(mock, monkeypatch):
    clock = FakeClock(monkeypatch)
    mock.post(SESSIONS, status=429, headers={"Retry-After": "20"})
    with pytest.raises(av.RateLimitError) as info:
        av.AvaturnClient(KEY, deadline=10).create_session()
    assert info.value.retry_after == 20.0
    assert clock.waits == []


def test_deadline_covers_the_backoff_waits(mock, monkeypatch):
    clock = FakeClock(monkeypatch)
    for _ in range(2):
        mock.delete(SESSIONS + "/s1", status=503)
    # backoff 0.5 s, then 1.0 s: the second wait would end past 1.2 s
    with pytest.raises(av.InternalServerError):
        av.AvaturnClient(KEY, deadline=1.2, max_retries=5).terminate_session("s1")
    assert clock.waits == [0.5]


def test_deadline_of_one_call_does_not_carry_over_to_the_next(mock, monkeypatch):
    clock = FakeClock(monkeypatch)
    mock.delete(SESSIONS + "/s1", status=503)
    mock.delete(SESSIONS + "/s1", status=204)
    mock.delete(SESSIONS + "/s1", status=503)
    mock.delete(SESSIONS + "/s1", status=204)
    client = av.AvaturnClient(KEY, deadline=1.0)
    assert client.terminate_session("s1") is True
    assert client.terminate_session("s1") is True
    assert clock.waits == [0.5, 0.5]


def test_deadline_of_one_call_never_touches_another_calls_connection(fake, sleeps):
    # 48 threads on one client, the server's latency close to each call's
    # deadline: a call ends by its own deadline (a timeout) or succeeds; none
    # is cut by another call's deadline, and none that said "not sent" created.
    client = client_for(fake, timeout=(2.0, 2.0), deadline=0.08)
    outcomes: list[Any] = []

    def start() -> None:
        for _ in range(4):
            try:
                outcomes.append(client.create_session())
            except av.AvaturnError as exc:
                outcomes.append(exc)

    for latency in (0.02, 0.05, 0.065, 0.075):
        fake.latency = latency
        assert run_threads(48, start) == []
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert [e for e in errors if type(e) is not av.APITimeoutError] == []
    successes = len(outcomes) - len(errors)
    assert successes > 0
    may_have_created = successes + sum(e.request_sent for e in errors)
    assert successes <= len(fake.created) <= may_have_created


@pytest.fixture
def stalled_resolver(monkeypatch):
    """getaddrinfo that hangs until the test ends (as a dead DNS server does)."""
    release = threading.Event()
    real = socket.getaddrinfo

    def stalled(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("flags", 0) & socket.AI_NUMERICHOST:  # a name: ask DNS
            release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalled)
    yield
    release.set()


def test_deadline_covers_name_resolution_and_sends_nothing_after(
    fake, sleeps, stalled_resolver
):
    client = av.AvaturnClient(
        KEY, base_url=fake.url.replace("127.0.0.1", "localhost"), deadline=0.3
    )
    started = time.monotonic()
    with pytest.raises(av.APITimeoutError, match="deadline") as info:
        client.create_session()
    assert time.monotonic() - started < 3.0  # the lookup stalls for 10 s
    assert info.value.request_sent is False
    assert fake.connections == 0 and fake.attempts["create"] == 0


@pytest.mark.parametrize("slow", ["resolve", "connect"])
def test_deadline_passed_before_sending_sends_nothing(fake, monkeypatch, slow):
    # The clock passes the deadline while the name resolves, or while the TCP
    # connection opens: the request must then not be written at all.
    clock = FakeClock(monkeypatch)
    module, name = {
        "resolve": (socket, "getaddrinfo"),
        "connect": (socket.socket, "connect"),
    }[slow]
    real = getattr(module, name)

    def late(*args: Any, **kwargs: Any) -> Any:
        clock.now += 10
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, late)
    with pytest.raises(av.APITimeoutError) as info:
        client_for(fake, deadline=5, max_retries=3).create_session()
    assert info.value.request_sent is False
    assert fake.attempts["create"] == 0 and clock.waits == []


@pytest.mark.parametrize(
    ("keep_alive", "idle", "connections"),
    [
        (None, 4.9, 1),  # within KEEPALIVE_EXPIRY: reused
        (None, 5.1, 2),  # past it: a new connection
        ("timeout=2, max=100", 0.9, 1),  # within the server's timeout less 1 s
        ("timeout=2, max=100", 1.1, 2),
        ("timeout=60", 5.1, 2),  # a longer server timeout never lengthens ours
    ],
)
def test_idle_connection_is_not_reused_past_its_keepalive_expiry(
    fake, monkeypatch, keep_alive, idle, connections
):
    clock = FakeClock(monkeypatch)
    if keep_alive is not None:
        fake.reply_headers.append(("Keep-Alive", keep_alive))
    client = client_for(fake)
    client.create_session()
    clock.now += idle
    client.create_session()
    assert fake.connections == connections
    assert fake.attempts["create"] == 2


def test_mint_cartesia_has_a_deadline(fake, sleeps, monkeypatch):
    fake.script("cartesia", Fault("body_trickle", delay=0.02))
    with pytest.raises(av.CredentialError, match="deadline"):
        av.mint_cartesia_access_token(
            api_key="ck-deadline", base_url=fake.url, timeout=(2, 2), deadline=0.3
        )


# --------------------------------------------------------------------------- #
# Bounded memory: bodies are read streamed, with caps
# --------------------------------------------------------------------------- #


def peak_traced_bytes(call: Any) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        try:
            call()
        except av.AvaturnError as exc:
            error: BaseException | None = exc
        else:
            error = None
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["huge", "endless", "gzip_bomb"])
@pytest.mark.parametrize(
    ("status", "raised"),
    [(200, av.APIResponseError), (500, av.InternalServerError)],
)
def test_body_caps_bound_memory(fake, sleeps, kind, status, raised):
    if kind == "gzip_bomb":
        gzip_bomb()  # built before measuring
    fake.script("create", Fault(kind, status=status))
    client = client_for(fake, timeout=(2.0, 5.0), deadline=20)
    error, peak = peak_traced_bytes(client.create_session)
    assert type(error) is raised, repr(error)
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    if status == 200:  # we ask for identity: a gzip answer is not inflated at all
        why = "Content-Encoding" if kind == "gzip_bomb" else "larger than 1048576 bytes"
        assert why in str(error)
    assert fake.attempts["create"] == 1


def test_error_body_is_cut_at_its_cap_and_quoted_short(fake, sleeps):
    body = json.dumps({"detail": "x" * 200_000}).encode()
    fake.script("create", Fault("raw", status=400, body=body))
    with pytest.raises(av.BadRequestError) as info:
        client_for(fake).create_session()
    # cut at 64 KiB, the JSON no longer parses: the detail is the text, quoted short
    assert len(str(info.value)) < 600


def test_unsupported_content_encoding_is_a_response_error(fake, sleeps):
    fake.script(
        "create",
        Fault(
            "raw",
            status=200,
            body=b"\x28\xb5\x2f\xfd",
            headers=(("Content-Encoding", "zstd"),),
        ),
    )
    with pytest.raises(av.APIResponseError, match="Content-Encoding"):
        client_for(fake).create_session()


# --------------------------------------------------------------------------- #
# The session context manager
# --------------------------------------------------------------------------- #


def test_session_context_terminates_on_success(mock):
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    mock.delete(SESSIONS + "/s1", status=204)
    with av.AvaturnClient(KEY).session(user_absent_timeout=30) as s:
        assert s.session_id == "s1"


def test_session_context_terminates_when_body_raises(mock):
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    mock.delete(SESSIONS + "/s1", status=204)
    with pytest.raises(KeyError), av.AvaturnClient(KEY).session():
        raise KeyError("boom")


def test_session_context_body_error_wins_over_terminate_error(mock, sleeps, caplog):
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    mock.delete(SESSIONS + "/s1", status=401)
    with pytest.raises(KeyError, match="boom"), av.AvaturnClient(KEY).session():
        raise KeyError("boom")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "s1" in warnings[0].getMessage() and "401" in warnings[0].getMessage()


def test_session_context_raises_terminate_error_after_clean_body(mock, sleeps):
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    mock.delete(SESSIONS + "/s1", status=401)
    with pytest.raises(av.AuthenticationError), av.AvaturnClient(KEY).session():
        pass


def test_session_context_retries_terminate_after_body_error(fake, sleeps):
    client = client_for(fake)
    fake.script("terminate", Fault("status", 503))
    with pytest.raises(RuntimeError, match="body failed"), client.session() as s:
        raise RuntimeError("body failed")
    assert s.session_id not in fake.sessions
    assert fake.attempts["terminate"] == 2


def test_session_context_logs_when_terminate_keeps_failing(fake, sleeps, caplog):
    client = client_for(fake)
    fake.script("terminate", *[Fault("status", 503)] * 3)
    with pytest.raises(RuntimeError, match="body failed"), client.session() as s:
        raise RuntimeError("body failed")
    assert s.session_id in fake.sessions
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "could not end" in r.getMessage()
    ]
    assert len(warnings) == 1 and s.session_id in warnings[0]


# --------------------------------------------------------------------------- #
# Module-level functions
# --------------------------------------------------------------------------- #


def test_module_functions_use_one_client_from_env(monkeypatch, no_env, mock):
    monkeypatch.setenv("AVATURN_API_KEY", "env-key")
    bearer = matchers.header_matcher(
        {"Authorization": "Bearer env-key"}, strict_match=False
    )
    engine = av.text_echo_engine("v1")
    mock.post(
        SESSIONS,
        match=[bearer, matchers.json_params_matcher({"conversation_engine": engine})],
        json={"session_id": "s1", "token": "t"},
    )
    mock.post(SESSIONS + "/s1/tasks", match=[bearer], json={"task_id": "k1"})
    mock.delete(SESSIONS + "/s1", match=[bearer], status=204)
    created = av.create_session(engine)
    assert av.say(created.session_id, "hi") == "k1"
    assert av.terminate_session(created.session_id) is True
    assert av._here().client is av._client()


def test_module_session_context_terminates(monkeypatch, no_env, mock):
    monkeypatch.setenv("AVATURN_API_KEY", "env-key")
    mock.post(SESSIONS, json={"session_id": "s1", "token": "t"})
    mock.delete(SESSIONS + "/s1", status=204)
    with av.session() as s:
        assert s.token == "t"


def test_module_functions_without_key_raise_configuration_error(no_env, mock):
    with pytest.raises(av.ConfigurationError, match="AVATURN_API_KEY"):
        av.create_session()


@pytest.mark.parametrize(
    "name", ["create_session", "say", "terminate_session", "session"]
)
def test_module_functions_take_the_methods_parameters(name):
    method = list(
        inspect.signature(getattr(av.AvaturnClient, name)).parameters.values()
    )
    function = list(inspect.signature(getattr(av, name)).parameters.values())
    if (
        function[-1].kind is inspect.Parameter.VAR_KEYWORD
    ):  # **options: the create options
        create = inspect.signature(av.AvaturnClient.create_session).parameters.values()
        options = [p.name for p in create if p.kind is p.KEYWORD_ONLY]
        assert options == list(av._CreateOptions.__annotations__)
        method, function = method[:2], function[:1]
    assert method[1:] == function


# --------------------------------------------------------------------------- #
# Credential minting
# --------------------------------------------------------------------------- #


class FakeOpenAI:
    """Stands in for openai.OpenAI: records with_options() and create() calls."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.api_key = "sk-fake-openai"
        self.options: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.closed = False
        self.result = result if result is not None else SimpleNamespace(value="ek_123")
        self.error = error
        self.realtime = SimpleNamespace(
            client_secrets=SimpleNamespace(create=self._create)
        )

    def with_options(self, **options: Any) -> FakeOpenAI:
        self.options.append(options)
        return self

    def _create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.result

    def close(self) -> None:
        self.closed = True


def test_mint_openai_sends_the_documented_request(monkeypatch, mock):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_1")
    mock.post(
        OPENAI_SECRETS,
        match=[
            matchers.json_params_matcher(
                {
                    "expires_after": {"anchor": "created_at", "seconds": 600},
                    "session": {"type": "realtime", "model": "gpt-realtime"},
                }
            ),
            matchers.header_matcher(
                {"Authorization": "Bearer sk-1", "OpenAI-Project": "proj_1"},
                strict_match=False,
            ),
        ],
        json={"value": "ek_123", "expires_at": 2000000000},
    )
    assert av.mint_openai_client_secret() == "ek_123"


def test_mint_openai_adds_type_on_a_copy(mock):
    config = {"model": "gpt-realtime", "instructions": "Be brief."}
    mock.post(
        OPENAI_SECRETS,
        match=[
            matchers.json_params_matcher(
                {
                    "expires_after": {"anchor": "created_at", "seconds": 120},
                    "session": {"type": "realtime", **config},
                }
            )
        ],
        json={"value": "ek_1"},
    )
    av.mint_openai_client_secret(config, expires_in=120, api_key="sk-1")
    assert config == {"model": "gpt-realtime", "instructions": "Be brief."}


@pytest.mark.parametrize("session", [{"temperature": float("nan")}, {"tools": {1, 2}}])
def test_mint_openai_refuses_a_session_it_cannot_send(monkeypatch, mock, session):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    with pytest.raises(av.ConfigurationError, match="JSON"):
        av.mint_openai_client_secret(session)


@pytest.mark.parametrize("expires_in", [9, 7201, 600.0, True])
def test_mint_openai_refuses_bad_expiry(mock, expires_in):
    with pytest.raises(av.ConfigurationError, match="expires_in"):
        av.mint_openai_client_secret(expires_in=expires_in, api_key="sk-1")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b'{"error": {"message": "Incorrect API key provided: sk-bad-1"}}'),
        (500, b"oops sk-bad-1"),
        (200, b"not json"),
        (200, b'{"value": null}'),
    ],
)
def test_mint_openai_failure_is_credential_error_without_key(mock, status, body):
    mock.post(OPENAI_SECRETS, status=status, body=body)
    with pytest.raises(av.CredentialError) as info:
        av.mint_openai_client_secret(api_key="sk-bad-1")
    assert info.value.provider == "openai"
    assert isinstance(info.value.__cause__, av.AvaturnError)
    assert "sk-bad-1" not in str(info.value) + repr(info.value)


def test_mint_openai_without_key_names_the_variable(mock):
    with pytest.raises(av.ConfigurationError, match="OPENAI_API_KEY"):
        av.mint_openai_client_secret()


@pytest.mark.parametrize(
    "url", ["http://[::1", "ftp://api.openai.com/v1", "http://api.openai.com/v1"]
)
def test_mint_openai_refuses_a_bad_base_url_as_configuration(monkeypatch, mock, url):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(av.ConfigurationError, match="base_url"):
        av.mint_openai_client_secret()


def test_mint_openai_against_loopback_needs_no_openai_package(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai would fail
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    secret = av.mint_openai_client_secret({"model": "gpt-realtime"}, expires_in=60)
    assert secret.startswith("ek_fake_")
    assert fake.minted_openai == [
        {
            "expires_after": {"seconds": 60, "anchor": "created_at"},
            "session": {"type": "realtime", "model": "gpt-realtime"},
        }
    ]
    assert fake.last_headers["openai"]["authorization"] == "Bearer sk-loopback"


def test_mint_openai_holds_to_its_timeout_and_deadline(monkeypatch, fake, sleeps):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-slow")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    fake.script("openai", Fault("late", delay=3.0), Fault("late", delay=3.0))
    for limits in ({"timeout": 0.3}, {"deadline": 0.3}):
        with pytest.raises(av.CredentialError) as info:
            av.mint_openai_client_secret(**limits)
        assert type(info.value.__cause__) is av.APITimeoutError
        assert info.value.__cause__.request_sent is True
    assert fake.attempts["openai"] == 2  # one attempt each: never retried
    assert sleeps == []


def test_mint_openai_with_the_callers_sdk_client_caps_its_timeout():
    client = FakeOpenAI()
    with pytest.warns(DeprecationWarning, match="openai_client"):
        secret = av.mint_openai_client_secret(
            openai_client=client, timeout=(2, 7), deadline=5
        )
    assert secret == "ek_123"
    # the SDK's one timeout: the longer of ours, cut to what is left of the deadline
    [options] = client.options
    assert options["max_retries"] == 0 and 4.5 < options["timeout"] <= 5.0
    assert client.calls == [
        {
            "expires_after": {"anchor": "created_at", "seconds": 600},
            "session": {"type": "realtime", "model": "gpt-realtime"},
        }
    ]
    av.close_shared_clients()
    assert client.closed is False


def test_mint_openai_sdk_failure_is_credential_error_without_key():
    cause = RuntimeError("Incorrect API key provided: sk-fake-openai")
    with pytest.raises(av.CredentialError) as info:
        av.mint_openai_client_secret(openai_client=FakeOpenAI(error=cause))
    assert info.value.provider == "openai"
    # the SDK's exception is not chained: its frames hold the request's headers
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert "RuntimeError: Incorrect API key provided: ***" in str(info.value)
    assert "sk-fake-openai" not in str(info.value) + repr(info.value)
    # the SDK's own reason ("Connection error.") says why through its cause
    wrapped = RuntimeError("Connection error.")
    wrapped.__cause__ = OSError("refused by sk-fake-openai")
    with pytest.raises(av.CredentialError) as info:
        av.mint_openai_client_secret(openai_client=FakeOpenAI(error=wrapped))
    assert str(info.value).endswith("Connection error. (OSError('refused by ***'))")
    with pytest.raises(av.CredentialError, match="no client secret"):
        av.mint_openai_client_secret(
            openai_client=FakeOpenAI(result=SimpleNamespace(value=None))
        )


def test_mint_openai_with_the_real_sdk_client_against_loopback(fake):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="sk-sdk", base_url=fake.url + "/v1")
    secret = av.mint_openai_client_secret(openai_client=client)
    assert secret.startswith("ek_fake_")
    assert fake.last_headers["openai"]["authorization"] == "Bearer sk-sdk"
    client.close()


@pytest.fixture
def openai_fake(monkeypatch):
    """A fake of its own for OpenAI, so its connection count is OpenAI's alone."""
    server = FakeAvaturn()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    yield server
    server.close()


def test_mint_openai_reuses_one_pooled_connection(monkeypatch, openai_fake):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-pooled")
    secrets = [av.mint_openai_client_secret() for _ in range(20)]
    assert len(set(secrets)) == 20
    assert openai_fake.attempts["openai"] == 20
    assert openai_fake.connections == 1


def test_mint_openai_follows_the_base_url(monkeypatch, openai_fake, fake):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-pooled")
    av.mint_openai_client_secret()
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    av.mint_openai_client_secret()
    assert (openai_fake.attempts["openai"], fake.attempts["openai"]) == (1, 1)


def test_mint_cartesia_reuses_one_pooled_connection_without_cookies(fake):
    fake.script(
        "cartesia",
        Fault(
            "raw",
            status=200,
            body=b'{"token": "ct_1"}',
            headers=(("Set-Cookie", "track=1; Path=/"),),
        ),
    )
    for _ in range(20):
        av.mint_cartesia_access_token(api_key="ck-pooled", base_url=fake.url)
    assert fake.attempts["cartesia"] == 20
    assert fake.connections == 2  # the raw fault closed the first one
    assert "cookie" not in fake.last_headers["cartesia"]


def test_close_shared_clients_releases_and_rebuilds(fake, openai_fake, monkeypatch):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-close")
    av.create_session()
    av.mint_cartesia_access_token(api_key="ck-close", base_url=fake.url)
    av.mint_openai_client_secret()
    av.close_shared_clients()
    av.create_session()
    av.mint_cartesia_access_token(api_key="ck-close", base_url=fake.url)
    av.mint_openai_client_secret()
    # Avaturn and Cartesia (one fake): 2 connections before, 2 after; OpenAI: 1 + 1
    assert (fake.connections, openai_fake.connections) == (4, 2)


def test_fork_child_mints_openai_on_its_own_connection(monkeypatch, openai_fake):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fork")
    av.mint_openai_client_secret()
    in_child(av.mint_openai_client_secret)
    av.mint_openai_client_secret()
    parent_first, child, parent_again = ports(openai_fake, "openai")
    assert child not in (parent_first, parent_again)
    assert parent_first == parent_again


def three_hosts(monkeypatch: pytest.MonkeyPatch, context: Any = None) -> Any:
    """Avaturn, OpenAI and Cartesia on fakes of their own (TLS with `context`),
    their keys and base URLs in the environment, as in production."""
    fakes = {name: FakeAvaturn() for name in ("avaturn", "openai", "cartesia")}
    for fake in fakes.values():
        if context is not None:
            fake.server.socket = context.wrap_socket(
                fake.server.socket, server_side=True
            )
            fake.url = fake.url.replace("http://", "https://")
    for name, value in {
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fakes["avaturn"].url,
        "OPENAI_API_KEY": "sk-three",
        "OPENAI_BASE_URL": fakes["openai"].url + "/v1",
        "CARTESIA_API_KEY": "ck-three",
        "CARTESIA_BASE_URL": fakes["cartesia"].url,
    }.items():
        monkeypatch.setenv(name, value)
    yield fakes
    for fake in fakes.values():
        fake.close()


@pytest.fixture
def tls_fakes(monkeypatch, tmp_path):
    """The three hosts over TLS on 127.0.0.1, trusted through the environment as
    in production (REQUESTS_CA_BUNDLE, SSL_CERT_FILE)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    yield from three_hosts(monkeypatch, context)


class TunnelProxy:
    """An HTTP proxy on 127.0.0.1 that answers CONNECT with ``status`` and
    then pipes the bytes to ``port`` there; ``heads`` keeps each CONNECT head."""

    def __init__(self, port: int, status: int = 200) -> None:
        self.port, self.status, self.heads = port, status, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                threading.Thread(
                    target=self.tunnel, args=(client,), daemon=True
                ).start()

    def tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(1)
        self.heads.append(head.decode())
        client.sendall(b"HTTP/1.1 %d Tunnel\r\nContent-Length: 0\r\n\r\n" % self.status)
        if self.status != 200:
            return client.close()
        server = socket.create_connection(("127.0.0.1", self.port))
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("status", [200, 407])
def test_client_tunnels_through_an_http_proxy_from_the_environment(
    monkeypatch, tmp_path, sleeps, status
):
    trustme = pytest.importorskip("trustme")
    ca, fake = trustme.CA(), FakeAvaturn()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.example").configure_cert(context)
    fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    port = fake.server.server_address[1]
    proxy, other = TunnelProxy(port, status), TunnelProxy(port)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("//", "//al:pa55@"))
    client = av.AvaturnClient(KEY, base_url=f"https://api.example:{port}")
    try:
        if status == 407:  # refused: nothing of the request went out
            with pytest.raises(av.APIConnectionError) as info:
                client.create_session()
            assert info.value.request_sent is False and "pa55" not in str(info.value)
            assert "tunnel to api.example" in str(info.value)
            return
        for _ in range(2):
            client.create_session()
        assert len(fake.created) == 2 and fake.connections == 1  # one tunnel, reused
        assert fake.last_headers["create"]["host"] == f"api.example:{port}"
        [head] = proxy.heads
        login = base64.b64encode(b"al:pa55").decode()
        assert head.startswith(f"CONNECT api.example:{port} HTTP/1.1\r\n")
        assert f"Proxy-Authorization: Basic {login}\r\n" in head and KEY not in head
        # the environment is read per call: a new proxy is followed at once
        monkeypatch.setenv("HTTPS_PROXY", other.url)
        client.create_session()
        assert len(proxy.heads) == 1 and len(other.heads) == 1
    finally:
        client.close(), proxy.close(), other.close(), fake.close()


def test_session_starts_over_tls_use_one_connection_per_host(tls_fakes):
    """The README's two flows, N times: one TLS connection per host, not N."""
    for _ in range(10):
        secret = av.mint_openai_client_secret()
        av.terminate_session(
            av.create_session(av.openai_realtime_engine(secret)).session_id
        )
        token = av.mint_cartesia_access_token()
        av.create_session(av.cartesia_engine(token, "agent_1"))
    assert {name: fake.connections for name, fake in tls_fakes.items()} == {
        "avaturn": 1,
        "openai": 1,
        "cartesia": 1,
    }
    assert tls_fakes["avaturn"].attempts == Counter(create=20, terminate=10)


def test_mint_cartesia_sends_documented_request(no_env, monkeypatch, mock):
    monkeypatch.setenv("CARTESIA_API_KEY", "ck-1")
    mock.post(
        "https://api.cartesia.ai/access-token",
        match=[
            matchers.json_params_matcher(
                {"grants": {"agent": True}, "expires_in": 120}
            ),
            matchers.header_matcher(
                {"Authorization": "Bearer ck-1", "Cartesia-Version": "2025-04-16"},
                strict_match=False,
            ),
        ],
        json={"token": "ct_tok"},
    )
    assert av.mint_cartesia_access_token(expires_in=120) == "ct_tok"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b'{"error": "bad key ck-2"}'),
        (500, b"oops"),
        (200, b"not json"),
        (200, b"{}"),
    ],
)
def test_mint_cartesia_failure_is_credential_error_without_key(mock, status, body):
    mock.post("https://api.cartesia.ai/access-token", status=status, body=body)
    with pytest.raises(av.CredentialError) as info:
        av.mint_cartesia_access_token(api_key="ck-2")
    assert info.value.provider == "cartesia"
    assert isinstance(info.value.__cause__, av.AvaturnError)
    assert "ck-2" not in str(info.value) + repr(info.value)


def test_mint_cartesia_network_failure_is_credential_error():
    with pytest.raises(av.CredentialError) as info:
        av.mint_cartesia_access_token(api_key="ck-3", base_url=closed_port_url())
    assert isinstance(info.value.__cause__, av.APIConnectionError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"api_key": "ck", "expires_in": 0}, "expires_in"),
        ({"api_key": "ck", "expires_in": 3601}, "expires_in"),
        ({"api_key": "ck", "base_url": "http://api.cartesia.ai"}, "https"),
        ({"api_key": "c k"}, "whitespace"),
        ({}, "CARTESIA_API_KEY"),
    ],
)
def test_mint_cartesia_refuses_bad_input_before_sending(no_env, mock, kwargs, match):
    with pytest.raises(av.ConfigurationError, match=match):
        av.mint_cartesia_access_token(**kwargs)
    assert len(mock.calls) == 0


# --------------------------------------------------------------------------- #
# Ready credentials (ready=True): minted ahead, each handed out once
# --------------------------------------------------------------------------- #


@pytest.fixture
def minter(monkeypatch, openai_fake):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ready")
    monkeypatch.setenv("CARTESIA_API_KEY", "ck-ready")
    monkeypatch.setenv("CARTESIA_BASE_URL", openai_fake.url)
    return openai_fake


def ready_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "avaturn-session-ready"]


def ahead_of(minter: FakeAvaturn, *handed: str) -> str:
    """The credential minted ahead: the one of the first two not handed out."""
    wait_for(lambda: av._here().ready.values)  # minted, and kept
    [ahead] = {mint[0] for mint in minter.mints[:2]} - set(handed)
    return ahead


def test_ready_hands_out_a_credential_minted_ahead_and_replaces_it(minter):
    first = av.mint_openai_client_secret(ready=True)  # none ready: minted now
    ahead = ahead_of(minter, first)  # and the next one, in the background
    second = av.mint_openai_client_secret(ready=True)
    assert second == ahead
    wait_for(lambda: len(minter.mints) == 3)  # its replacement, at once
    assert repr(second) == "***"


def test_ready_hands_each_credential_to_one_caller_only(minter):
    av.mint_openai_client_secret(ready=True)
    wait_for(lambda: len(minter.mints) == 2)
    got: list[str] = []
    assert (
        run_threads(32, lambda: got.append(av.mint_openai_client_secret(ready=True)))
        == []
    )
    assert len(set(got)) == 32  # the docs' rule: one per user session, never reused


def test_ready_keeps_at_most_8_configurations_under_a_race(minter, monkeypatch):
    class Jobs(dict):
        def __len__(self) -> int:
            length = super().__len__()
            time.sleep(0.002)  # widen the race between the cap's look and the keep
            return length

    monkeypatch.setattr(av, "_JOBS", Jobs())
    configs = [{"model": "gpt-realtime", "instructions": f"Be {i}."} for i in range(32)]
    mint = lambda: av.mint_openai_client_secret(configs.pop(), ready=True)
    assert run_threads(32, mint) == []
    assert len(av._JOBS) == 8  # the others minted inline, none kept ahead


def test_mint_survives_its_connections_dropped_meanwhile(minter, monkeypatch):
    class Minters(dict):
        def setdefault(self, key: Any, value: Any) -> Any:
            kept = super().setdefault(key, value)
            self.clear()  # another thread, past 8 configurations, drops them all
            return kept

    monkeypatch.setattr(av._here(), "minters", Minters())
    assert av.mint_openai_client_secret() == minter.mints[-1][0]


def test_ready_never_hands_out_one_past_its_share_of_life(minter, monkeypatch):
    ahead = ahead_of(minter, av.mint_cartesia_access_token(expires_in=100, ready=True))
    real = av._now
    monkeypatch.setattr(av, "_now", lambda: real() + 100 * (1 - av.READY_MIN_LIFE) + 1)
    assert av.mint_cartesia_access_token(expires_in=100, ready=True) != ahead


def test_ready_credentials_are_kept_per_configuration(minter):
    brief = {"model": "gpt-realtime", "instructions": "Be brief."}
    kind = {"model": "gpt-realtime", "instructions": "Be kind."}
    av.mint_openai_client_secret(brief, ready=True)
    wait_for(lambda: len(minter.mints) == 2)
    mints = lambda: {value: (body, key) for value, body, key in minter.mints}
    value = av.mint_openai_client_secret(kind, ready=True)
    # minted for its own configuration, never the other's
    assert mints()[value][0]["session"]["instructions"] == "Be kind."
    for key in ("sk-ready", "sk-other"):  # nor for another key
        minted = len(minter.mints)
        got = av.mint_openai_client_secret(brief, api_key=key, ready=True)
        assert mints()[got] == ({"expires_after": ANY, "session": ANY}, key)
        assert mints()[got][0]["session"]["instructions"] == "Be brief."
        wait_for(lambda n=minted: len(minter.mints) > n)  # the next one is ready


def test_ready_minting_failing_or_slow_never_fails_or_holds_a_caller(
    minter, monkeypatch, caplog
):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", minter.url)
    av.mint_openai_client_secret(ready=True)
    wait_for(lambda: len(minter.mints) == 2)
    minter.script("openai", *[Fault("status", 500)] * 3, Fault("late", delay=10))
    for attempts in (3, 4, 5):  # warm() asks the helper to mint ahead: it fails
        av.warm()
        wait_for(lambda n=attempts: minter.attempts["openai"] == n)
    av.warm()  # and now it waits 10 s for an answer
    wait_for(lambda: minter.attempts["openai"] == 6)
    started = time.monotonic()
    assert av.mint_openai_client_secret(ready=True)  # the one ahead
    assert av.mint_openai_client_secret(ready=True)  # none: minted inline, at once
    assert time.monotonic() - started < 5
    warnings = [r.getMessage() for r in caplog.records if "ahead" in r.getMessage()]
    assert len(warnings) == 1 and "sk-ready" not in warnings[0]  # once, redacted


def test_ready_idle_costs_one_mint_per_lifetime_and_one_thread(minter, monkeypatch):
    before = set(ready_threads())  # another test's, still finishing a mint
    real = av._now
    monkeypatch.setattr(av, "_now", lambda: real() * 100)  # a day in 15 minutes
    av.mint_cartesia_access_token(expires_in=10, ready=True)
    av.mint_openai_client_secret(expires_in=600, ready=True)
    started = av._now()
    time.sleep(0.5)  # idle for some 50 s of the library's clock
    lifetimes = (av._now() - started) / 10 + 1  # of the 10 s token; the other: 1
    assert len(minter.mints) <= 2 + lifetimes + 2  # one per lifetime, not a loop
    assert len(set(ready_threads()) - before) == 1
    av.close_shared_clients()  # stops it
    wait_for(lambda: not set(ready_threads()) - before)


def test_ready_a_forked_child_has_none_of_its_parent(minter):
    ahead = ahead_of(minter, av.mint_openai_client_secret(ready=True))

    def child() -> list[Any]:
        os.environ |= {"AVATURN_API_KEY": KEY, "AVATURN_BASE_URL": minter.url}
        mine = av.mint_openai_client_secret(ready=True)  # none here: minted now
        threads = len(ready_threads())
        av.warm()  # fills what this process's parent asked for
        wait_for(lambda: len(minter.mints) >= 5)
        return [mine, threads, av.mint_openai_client_secret(ready=True)]

    mine, threads, warmed = in_child(child)
    assert mine != ahead and threads <= 1  # the parent's thread did not come along
    assert warmed in {m[0] for m in minter.mints} and warmed not in (mine, ahead)
    assert av.mint_openai_client_secret(ready=True) == ahead  # still the parent's


# --------------------------------------------------------------------------- #
# Concurrency and keep-alive
# --------------------------------------------------------------------------- #


def run_threads(n: int, target) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def wrapped() -> None:
        barrier.wait()
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrapped) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


@pytest.mark.parametrize("shared", ["client", "module"])
def test_32_threads_share_one_client(fake, caplog, monkeypatch, no_env, shared):
    caplog.set_level(logging.WARNING, logger="urllib3")
    # however slow a loaded machine is, no connection idles out on either side
    monkeypatch.setattr(av, "KEEPALIVE_EXPIRY", 600.0)
    fake.idle_timeout = 600.0
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    client = client_for(fake, timeout=(5.0, 10.0))
    create = client.create_session if shared == "client" else av.create_session
    calls_per_thread = 8
    fake.latency = 0.05
    with client:
        errors = run_threads(32, lambda: [create() for _ in range(calls_per_thread)])
    assert errors == []
    assert len(fake.created) == 32 * calls_per_thread
    assert fake.connections <= 32
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_module_functions_build_one_client_under_a_race(fake, monkeypatch, no_env):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    built = []

    class Slow(av.AvaturnClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(1)
            time.sleep(0.05)  # widen the race window
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(av, "AvaturnClient", Slow)
    assert run_threads(32, av.create_session) == []
    assert len(built) == 1 and len(fake.created) == 32


def test_module_functions_keep_one_connection_alive(fake, monkeypatch, no_env):
    monkeypatch.setattr(av, "KEEPALIVE_EXPIRY", 600.0)  # a loaded machine idles
    fake.idle_timeout = 600.0
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    for i in range(100):
        created = av.create_session()
        av.say(created.session_id, f"line {i}")
        assert av.terminate_session(created.session_id) is True
    assert sum(fake.attempts.values()) == 300
    assert fake.connections == 1


# --------------------------------------------------------------------------- #
# Fork safety (gunicorn --preload, uWSGI, celery prefork)
# --------------------------------------------------------------------------- #


def in_child(fn: Any, timeout: float = 20.0) -> Any:
    """Run `fn` in a forked child; its JSON result, or pytest.fail on error or hang."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_end)
        try:
            out = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(out).encode())
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(
                "the forked child hung (a lock or connection shared with the parent?)"
            )
        with os.fdopen(read_end, "rb", closefd=False) as pipe:
            data = pipe.read()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    out = json.loads(data)
    assert "error" not in out, out["error"]
    return out["ok"]


def ports(fake: FakeAvaturn, route: str) -> list[int]:
    return [port for r, port in fake.peers if r == route]


@pytest.mark.parametrize("kind", ["client", "module"])
def test_fork_child_gets_its_own_connection(fake, monkeypatch, no_env, kind):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    client = client_for(fake)
    create = client.create_session if kind == "client" else av.create_session
    create()  # the parent now holds a pooled keep-alive connection
    child_sid = in_child(lambda: create().session_id)
    create()  # the parent's connection still works and is still its own
    parent_first, child, parent_again = ports(fake, "create")
    assert child != parent_first, "the child used the parent's connection"
    assert parent_again == parent_first, "the child disturbed the parent's connection"
    assert child_sid in fake.sessions


def test_fork_child_mints_on_its_own_connection(fake, monkeypatch, no_env):
    monkeypatch.setenv("CARTESIA_API_KEY", "ck-fork")
    monkeypatch.setenv("CARTESIA_BASE_URL", fake.url)
    av.mint_cartesia_access_token()
    in_child(av.mint_cartesia_access_token)
    av.mint_cartesia_access_token()
    parent_first, child, parent_again = ports(fake, "cartesia")
    assert child not in (parent_first, parent_again)


def test_fork_child_gets_fresh_locks(fake, monkeypatch, no_env):
    """A fork while another thread holds the library's locks must not deadlock the child."""
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    av.create_session()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with av._here().lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:

        def lifecycle() -> bool:
            # another AVATURN_BASE_URL: the child must build a client, under the lock
            os.environ["AVATURN_BASE_URL"] = fake.url + "/"
            created = av.create_session()
            av.say(created.session_id, "from the child")
            return av.terminate_session(created.session_id)

        assert in_child(lifecycle) is True
    finally:
        release.set()
        thread.join()


# fork(2) straight from libc, as uWSGI forks its workers: Python's at-fork
# handlers do not run. PyDLL keeps the GIL with the forking thread; a process
# of its own, so that no thread of the test run is caught mid-way by the fork.
RAW_FORK = """
import ctypes, json, os, threading
import avaturn_session as av

def start():
    av.create_session()
    av.mint_cartesia_access_token()

start()  # the parent now pools a connection to each host
held, release = threading.Event(), threading.Event()

def hold():  # another thread holds the library's lock at the fork
    with av._here().lock:
        held.set()
        release.wait(30)

threading.Thread(target=hold).start()
held.wait(10)
if ctypes.PyDLL(None).fork() == 0:
    os.environ["AVATURN_BASE_URL"] += "/"  # the child must build its client, locked
    start()
    os._exit(0)
os.wait()
release.set()
start()  # the parent's own connections, undisturbed
"""


def test_raw_fork_child_shares_no_connection_or_lock(fake, no_env):
    env = {"AVATURN_API_KEY": KEY, "AVATURN_BASE_URL": fake.url}
    env |= {"CARTESIA_API_KEY": "ck-fork", "CARTESIA_BASE_URL": fake.url}
    env |= {"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]}
    subprocess.run([sys.executable, "-c", RAW_FORK], env=env, timeout=60, check=True)
    for route in ("create", "cartesia"):
        parent_first, child, parent_again = ports(fake, route)
        assert child not in (parent_first, parent_again), route
        assert parent_again == parent_first, route
    assert len(fake.created) == 3


# --------------------------------------------------------------------------- #
# warm(): a fresh worker's connections opened before any visitor waits
# --------------------------------------------------------------------------- #


@pytest.fixture
def three_fakes(monkeypatch):
    yield from three_hosts(monkeypatch)


def connections(fakes: dict[str, FakeAvaturn]) -> dict[str, int]:
    return {name: fake.connections for name, fake in fakes.items()}


def session_starts(n: int = 3) -> None:
    """The README's two flows, as a worker serves its visitors."""
    for _ in range(n):
        secret = av.mint_openai_client_secret()
        av.create_session(av.openai_realtime_engine(secret))
        av.create_session(av.cartesia_engine(av.mint_cartesia_access_token(), "a1"))


def test_warm_opens_each_configured_host_and_sends_nothing(three_fakes):
    assert av.warm() == []
    wait_for(lambda: all(connections(three_fakes).values()))
    assert connections(three_fakes) == {"avaturn": 1, "openai": 1, "cartesia": 1}
    assert all(not fake.requests for fake in three_fakes.values())  # nothing sent
    assert av.warm() == []  # twice is safe: the same connections
    session_starts()
    assert connections(three_fakes) == {"avaturn": 1, "openai": 1, "cartesia": 1}


def test_warm_skips_providers_without_a_key(three_fakes, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("CARTESIA_API_KEY")
    assert av.warm() == []
    wait_for(lambda: three_fakes["avaturn"].connections)
    assert connections(three_fakes) == {"avaturn": 1, "openai": 0, "cartesia": 0}


def test_warm_over_tls_opens_the_connections_the_calls_use(tls_fakes):
    assert av.warm() == []
    session_starts()
    assert connections(tls_fakes) == {"avaturn": 1, "openai": 1, "cartesia": 1}


def test_warm_survives_an_unreachable_host_and_says_which(
    three_fakes, monkeypatch, caplog
):
    dead = closed_port_url()
    monkeypatch.setenv("OPENAI_BASE_URL", dead + "/v1")
    assert av.warm() == [dead + "/v1"]
    # each fake counts a connection once its own thread has taken it: wait for both
    wait_for(
        lambda: (
            three_fakes["cartesia"].connections and three_fakes["avaturn"].connections
        )
    )
    assert f"could not warm {dead}/v1" in caplog.text
    assert "sk-three" not in caplog.text
    assert connections(three_fakes) == {"avaturn": 1, "openai": 0, "cartesia": 1}


def test_warm_is_bounded_by_the_connect_timeout(three_fakes, stalled_resolver):
    url = three_fakes["avaturn"].url.replace("127.0.0.1", "localhost")
    client = av.AvaturnClient(KEY, base_url=url, timeout=(0.2, 5))
    assert client.warm() is False
    assert three_fakes["avaturn"].connections == 0


def test_warm_refuses_bad_configuration(three_fakes, monkeypatch):
    monkeypatch.delenv("AVATURN_API_KEY")
    with pytest.raises(av.ConfigurationError, match="AVATURN_API_KEY"):
        av.warm()
    assert connections(three_fakes) == {"avaturn": 0, "openai": 0, "cartesia": 0}


def test_warm_in_a_forked_child_opens_its_own_connections(three_fakes):
    assert av.warm() == []
    wait_for(lambda: all(connections(three_fakes).values()))

    def child_worker() -> list[str]:
        cold = av.warm()  # as gunicorn's post_worker_init hook would
        session_starts(1)
        return cold

    assert in_child(child_worker) == []
    # the child opened its own (it never used the parent's); the parent's still serve
    assert connections(three_fakes) == {"avaturn": 2, "openai": 2, "cartesia": 2}
    session_starts(1)
    assert connections(three_fakes) == {"avaturn": 2, "openai": 2, "cartesia": 2}


# --------------------------------------------------------------------------- #
# No secret anywhere a framework looks (messages, tracebacks, frame locals)
# --------------------------------------------------------------------------- #


def test_error_never_shows_url_credentials_or_queries_a_server_echoes(fake, sleeps):
    page = (
        b"upstream http://alice:pa55@proxy.example:3128/ failed for "
        b"https://api.example/v1?api-key=QUERYSECRET&x=1 done"
    )
    fake.script(
        "create", Fault("raw", status=502, body=page, content_type="text/plain")
    )
    with pytest.raises(av.InternalServerError) as info:
        client_for(fake).create_session()
    text = str(info.value) + repr(info.value.body)
    assert "alice" not in text and "pa55" not in text and "QUERYSECRET" not in text
    assert "//***@proxy.example" in text and "?***" in text


def test_proxy_credentials_never_reach_the_error(sleeps):
    http_session = requests.Session()
    proxy = closed_port_url().replace("http://", "http://alice:pa55word@")
    http_session.proxies = {"https": proxy, "http": proxy}
    client = av.AvaturnClient(
        KEY, base_url="https://api.example", http_session=http_session
    )
    with pytest.raises(av.APIConnectionError) as info:
        client.create_session()
    text = "".join(traceback.format_exception(info.value))
    assert "pa55word" not in text and "alice" not in text


def test_a_token_the_server_quotes_cut_short_leaves_no_prefix(fake, sleeps):
    fake.token_factory = lambda n: "SESSTOK-CUT-0123456789abcdef"
    held = client_for(fake).create_session()
    quoted = json.dumps({"detail": f"no speech for token {held.token[:15]}"})
    fake.script("say", Fault("raw", status=400, body=quoted.encode()))
    with pytest.raises(av.BadRequestError) as info:
        client_for(fake).say(held.session_id, "hi")
    assert held.token[:6] not in str(info.value) + repr(info.value.body)
    assert str(info.value).endswith("no speech for token ***")


def test_token_one_client_received_is_scrubbed_from_another_clients_error(fake, sleeps):
    fake.token_factory = lambda n: f"SESSTOK-CROSS-{n}-secret"
    first = client_for(fake).create_session()
    fake.script("create", Fault("echo"))
    other = av.AvaturnClient("another-key-123", base_url=fake.url)
    with pytest.raises(av.AvaturnError) as info:
        other.create_session()
    error = info.value
    text = str(error) + repr(error) + repr(vars(error))
    assert first.token not in text


def test_request_id_and_json_keys_are_redacted(fake, sleeps):
    fake.token_factory = lambda n: f"SESSTOK-KEYS-{n}-secret"
    held = client_for(fake).create_session()
    fake.script("say", Fault("echo"))
    with pytest.raises(av.InternalServerError) as info:
        client_for(fake).say(held.session_id, "hi")
    error = info.value
    assert held.token not in error.request_id and error.request_id.endswith("***")
    assert held.token not in json.dumps(error.body)
    assert KEY not in json.dumps(error.body)


def frames_locals(error: BaseException) -> list[str]:
    """repr() of every local of this module's frames reachable from `error`,
    but for the engine a caller passed to create_session (the caller's own)."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        todo += [exc.__cause__, exc.__context__]
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_filename == av.__file__:
                found += [
                    f"{frame.f_code.co_name}: {name}={value!r}"
                    for name, value in frame.f_locals.items()
                    if (frame.f_code.co_name, name) != ("create_session", "engine")
                ]
            tb = tb.tb_next
    return found


# --------------------------------------------------------------------------- #
# Secret leak scan: every error, log line and frame
# --------------------------------------------------------------------------- #

S_AVATURN = "AVK-SENTINEL-1f3b"
S_OPENAI = "ek_SENTINEL-77aa"
S_CARTESIA = "CTK-SENTINEL-90c1"
S_SESSION = "SESSTOK-SENTINEL-5d2e"
S_OPENAI_KEY = "sk-SENTINEL-OPENAI"
S_CARTESIA_KEY = "ck-SENTINEL-CARTESIA"
SENTINELS = (S_AVATURN, S_OPENAI, S_CARTESIA, S_SESSION, S_OPENAI_KEY, S_CARTESIA_KEY)


def test_secret_leak_scan(fake, sleeps, caplog, monkeypatch, no_env):
    caplog.set_level(logging.DEBUG)
    fake.api_key = S_AVATURN
    fake.token_factory = lambda n: S_SESSION
    client = av.AvaturnClient(S_AVATURN, base_url=fake.url, timeout=(2.0, 0.2))
    held = client.create_session(av.text_echo_engine("v1"))
    texts: list[str] = [repr(client), repr(held), str(held)]
    engines = [
        av.openai_realtime_engine(S_OPENAI),
        av.cartesia_engine(S_CARTESIA, "agent_1"),
        {"type": "bogus", "client_secret": S_OPENAI, "access_token": S_CARTESIA},
    ]
    calls = [lambda e=e: client.create_session(e) for e in engines]
    calls += [
        lambda: client.say(held.session_id, "hi"),
        lambda: client.terminate_session("x"),
    ]
    faults = [
        Fault("echo"),
        Fault("late"),
        Fault("reset"),
        Fault("truncated"),
        Fault("html"),
    ]
    faults += [
        Fault("empty"),
        Fault("redirect"),
        Fault("status", 422),
        Fault("status", 429),
    ]
    errors: list[BaseException] = []
    for call in calls:
        for fault in faults:
            for name in ("create", "say", "terminate"):
                fake.script(name, *[fault] * 3)
            try:
                call()
            except av.AvaturnError as exc:
                errors.append(exc)
            for name in ("create", "say", "terminate"):
                fake.scripts[name].clear()
    # a wrong key, echoed back by a nasty server
    fake.script("create", Fault("echo"))
    with pytest.raises(av.InternalServerError) as info:
        av.AvaturnClient(S_AVATURN, base_url=fake.url).create_session(engines[0])
    errors.append(info.value)
    # minting: Cartesia echoes its key, OpenAI's SDK against the echoing fake
    # (keys from the environment, as in production: a key the caller passes as
    # an argument is in the caller's own frames already)
    monkeypatch.setenv("CARTESIA_API_KEY", S_CARTESIA_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", S_OPENAI_KEY)
    fake.script("cartesia", Fault("echo"))
    with pytest.raises(av.CredentialError) as info:
        av.mint_cartesia_access_token(base_url=fake.url)
    errors.append(info.value)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    fake.script("openai", *[Fault("echo")] * 3)
    with pytest.raises(av.CredentialError) as info:
        av.mint_openai_client_secret()
    errors.append(info.value)
    # the CLI's one-line errors: a fresh process knows only the keys in its
    # environment (it never saw the session's token, so it cannot scrub it)
    monkeypatch.setenv("AVATURN_API_KEY", S_AVATURN)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    fake.script("say", Fault("echo"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert av.main(["say", held.session_id, "hi"]) == 1
    assert "Bearer ***" in err.getvalue()
    assert S_AVATURN not in err.getvalue()

    assert len(errors) > 40
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    texts += [repr(vars(e)) for e in errors]
    # our log lines and urllib3's under them (the openai SDK and its httpcore
    # log raw response headers at DEBUG: not ours to scrub, see the README)
    ours = ("avaturn_session", "urllib3")
    texts += [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ours]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    for text in texts:
        for sentinel in SENTINELS:
            assert sentinel not in text
    # bad settings: a key with a newline, a malformed base URL beside a key
    for variable in ("AVATURN_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"):
        monkeypatch.setenv(variable, os.environ[variable] + "\n")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://[::1")
    for call in (
        av.AvaturnClient,
        av.mint_openai_client_secret,
        av.mint_cartesia_access_token,
        av.warm,
    ):
        with pytest.raises(av.ConfigurationError) as info:
            call()
        errors.append(info.value)
    monkeypatch.setenv("OPENAI_API_KEY", S_OPENAI_KEY)
    with pytest.raises(av.ConfigurationError) as info:
        av.mint_openai_client_secret()
    errors.append(info.value)
    # what Sentry records: the locals of every frame of ours in the chain (but
    # the engine a caller passes to create_session: the caller's own argument)
    locals_text = [text for e in errors for text in frames_locals(e)]
    assert len(locals_text) > 100
    for text in locals_text:
        for sentinel in SENTINELS:
            assert sentinel not in text, text[:300]


# --------------------------------------------------------------------------- #
# Every promise at every phase and byte offset (testing/fake_avaturn.FaultServer)
# --------------------------------------------------------------------------- #

# Where the first exchange breaks: (phase, offset, action); offsets are byte
# counts, or marks in what the server reads or writes (it stops right after).
BODY_MARKS = (0, 1, ': "', '"sess_', '", "', '"token": "TOKEN', 10**6)
HEAD_MARKS = (0, 1, "HTTP/1.1 ", "\r\n", "Content-Length: ")
FAULT_POINTS = [
    ("accept", 0, "stall"),
    ("accept", 0, "garble"),
    ("accept", 0, "early"),
    *[
        ("request", n, a)
        for n in (1, 10, 100, "head", "all")
        for a in ("stall", "cut", "garble", "early")
    ],
    *[("head", n, a) for n in HEAD_MARKS for a in ("stall", "cut", "garble")],
    *[("body", n, a) for n in BODY_MARKS for a in ("stall", "cut", "garble")],
]
TLS_POINTS = [
    ("accept", 0, "cut"),
    ("accept", 0, "garble"),
    *[("tls", n, a) for n in (1, 100) for a in ("stall", "cut", "garble")],
    ("request", "head", "stall"),
    ("request", 1, "cut"),
    ("head", 1, "cut"),
    ("body", '"sess_', "stall"),
    ("body", '", "', "cut"),
    ("body", 10**6, "stall"),
]
# say and terminate: every phase, fewer offsets
OTHER_POINTS = [p for p in FAULT_POINTS if p[1] in (0, 1, "all", "\r\n", 10**6)]
FAULT_CASES = [
    *[("create", False, p) for p in FAULT_POINTS],
    *[("create", True, p) for p in TLS_POINTS],
    *[(op, False, p) for op in ("say", "terminate") for p in OTHER_POINTS],
    *[(op, True, p) for op in ("say", "terminate") for p in TLS_POINTS[:5]],
]
# frames a traceback may hold: ours and the caller's, never the transport's
FOREIGN_FRAMES = re.compile(r"[/\\](requests|urllib3|http|socket|ssl)(\.py|[/\\])")


@pytest.fixture
def tls_context(tmp_path, monkeypatch):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return context


def every_frame(error: BaseException) -> list[tuple[str, str, dict[str, Any]]]:
    """(file, function, locals) of every frame of `error`, its chain and context."""
    frames, todo, seen = [], [error], set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        todo += [exc.__cause__, exc.__context__]
        tb = exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            frames.append((code.co_filename, code.co_name, dict(tb.tb_frame.f_locals)))
            tb = tb.tb_next
    return frames


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    """No secret in the error's text, fields, traceback or any frame's locals;
    no frame below this module's own (requests', urllib3's, the sockets')."""
    texts = [str(error), repr(error), repr(vars(error))]
    texts.append("".join(traceback.format_exception(error)))
    for filename, function, local in every_frame(error):
        assert not FOREIGN_FRAMES.search(filename), (filename, function)
        if filename != __file__:  # the test's own frames hold what it passed
            texts += [f"{function}: {name}={value!r}" for name, value in local.items()]
    for text in texts:
        for secret in secrets:
            assert secret not in text, text[:300]


@pytest.mark.parametrize(
    ("op", "tls", "point"),
    FAULT_CASES,
    ids=[
        f"{o}-{'tls' if t else 'tcp'}-{p[0]}-{p[1]!r}-{p[2]}" for o, t, p in FAULT_CASES
    ],
)
def test_every_fault_at_every_phase_keeps_every_promise(
    op, tls, point, request, monkeypatch, sleeps
):
    """Whatever breaks, wherever: the call ends by its deadline (a create: plus
    CLEANUP_GRACE), request_sent is what the server saw, every session the
    server made is returned, ended or named, the error is typed, and no secret
    is in its text, its chain or any frame."""
    monkeypatch.setattr(av, "CLEANUP_GRACE", 1.0)  # the grace, short: a fast test
    context = request.getfixturevalue("tls_context") if tls else None
    server = FaultServer(*point, context=context)
    client = av.AvaturnClient(
        S_AVATURN, base_url=server.url, timeout=(5.0, 5.0), deadline=0.3
    )
    call = {
        "create": lambda: client.create_session(av.openai_realtime_engine(S_OPENAI)),
        "say": lambda: client.say("s1", "hi"),
        "terminate": lambda: client.terminate_session("s1"),
    }[op]
    started = time.monotonic()
    try:
        result, error = call(), None
    except av.AvaturnError as exc:
        result, error = None, exc
    elapsed = time.monotonic() - started
    server.close()
    assert elapsed < 0.3 + (av.CLEANUP_GRACE if op == "create" else 0) + 2.0
    if error is not None:
        assert getattr(error, "request_sent", True) == (server.seen > 0)
        assert_no_secret(error, S_AVATURN, S_OPENAI, "TOKEN-SENTINEL")
    if op != "create":
        return
    returned = {result.session_id} if isinstance(result, av.AvaturnSession) else set()
    named = {getattr(error, "session_id", None)} - {None}
    for sid in server.created:
        if sid in returned | set(server.ended) | named:
            continue
        # lost: only when its id never reached the client whole, and then the
        # error says a session may have been created
        assert not server.id_sent, sid
        assert "may have been created" in str(error), sid


def test_a_callers_http_session_counts_every_failure_as_sent(sleeps):
    # requests' own adapters do not count the bytes they write: a failure
    # through them may have been sent, so a create is never repeated.
    # Even a refused connection: nothing was sent, but nothing says so.
    theirs = requests.Session()
    client = av.AvaturnClient(KEY, base_url=closed_port_url(), http_session=theirs)
    with pytest.raises(av.APIConnectionError) as info:
        client.create_session()
    assert info.value.request_sent is True and sleeps == []


def test_create_session_ends_the_session_when_its_own_code_fails_after(
    fake, monkeypatch
):
    def broken(*args: Any) -> None:
        raise KeyboardInterrupt  # anything, once the answer is in

    monkeypatch.setattr(av, "AvaturnSession", broken)
    with pytest.raises(KeyboardInterrupt):
        client_for(fake).create_session()
    assert len(fake.created) == 1 and fake.sessions == {}


@pytest.mark.parametrize("handler", ["requests' adapter", "the library's attempt"])
def test_an_interruption_while_a_failure_is_handled_carries_none_of_it(handler):
    # A signal's exception raised while requests, or the library itself,
    # handles the connection's failure: that failure's frames (requests',
    # the connection's, holding the request) stay behind.
    code = {
        "requests' adapter": requests.adapters.HTTPAdapter.send.__code__,
        "the library's attempt": av._Transport._send.__code__,
    }[handler]

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def line(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and isinstance(sys.exc_info()[1], OSError):
                raise KeyboardInterrupt
            return line

        return line

    engine = av.openai_realtime_engine(S_OPENAI)
    client = av.AvaturnClient(S_AVATURN, base_url=closed_port_url(), max_retries=0)
    sys.settrace(trace)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            client.create_session(engine)
    finally:
        sys.settrace(None)
    assert_no_secret(info.value, S_AVATURN, S_OPENAI)


class SoftTimeLimitExceeded(Exception):
    """What celery raises in a task from a signal handler: an Exception."""


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SoftTimeLimitExceeded])
@pytest.mark.parametrize("nth", range(1, 40))
@pytest.mark.parametrize("op", ["create", "say"])
def test_an_interruption_at_any_instant_goes_on_and_loses_no_session(
    fake, monkeypatch, caplog, op, nth, interrupt
):
    """Ctrl-C, a task's time limit, gevent's Timeout: raised at the nth tick of
    the library's clock, wherever that is. It reaches the caller as raised,
    with no frame below the library's own and no secret in any frame; a
    session the server made is returned, ended, or named in a WARNING."""
    fake.api_key, fake.token_factory = S_AVATURN, lambda n: S_SESSION
    client = av.AvaturnClient(S_AVATURN, base_url=fake.url, timeout=(5.0, 5.0))
    held = client.create_session() if op == "say" else None
    ticks, real = [0], av._now

    def now() -> float:
        ticks[0] += 1
        if ticks[0] == nth:
            raise interrupt("raised asynchronously")
        return real()

    monkeypatch.setattr(av, "_now", now)
    try:
        if op == "create":
            held = client.create_session(av.openai_realtime_engine(S_OPENAI))
        else:
            client.say(held.session_id, "hi")
    except interrupt as exc:
        assert str(exc) == "raised asynchronously"
        assert_no_secret(exc, S_AVATURN, S_OPENAI, S_SESSION)
    monkeypatch.setattr(av, "_now", real)
    warned = " ".join(r.getMessage() for r in caplog.records)
    unnamed = "may have been created" in warned  # its answer never arrived whole
    for sid in fake.sessions:
        assert sid == getattr(held, "session_id", None) or sid in warned or unnamed


# --------------------------------------------------------------------------- #
# A created session is never lost: answers that name it but cannot be used
# --------------------------------------------------------------------------- #

OK_BODY = b'{"session_id": "{sid}", "token": "{token}"}'


def answer(body: bytes, *headers: str, status: str = "201 Created") -> bytes:
    """A whole HTTP/1.1 answer: the status line, `headers`, a Content-Length."""
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    if not any(h.lower().startswith("content-length") for h in headers):
        head.append("Content-Length: {len}")  # filled in by the fake
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def gzipped(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


# (answer the server writes, having created the session; the session's id)
MANGLED_ANSWERS = {
    "a float id": (answer(b'{"session_id": 123.0, "token": "{token}"}'), "123.0"),
    "gzip despite identity": (
        answer(
            gzipped(b'{"session_id": "sess_gz", "token": "t"}'),
            "Content-Encoding: gzip",
        ),
        "sess_gz",
    ),
    "invalid UTF-8 elsewhere": (answer(OK_BODY[:-1] + b', "x": "\xff\xfe"}'), None),
    "a 5,000-digit integer elsewhere": (
        answer(OK_BODY[:-1] + b', "n": ' + b"7" * 5000 + b"}"),
        None,
    ),
    "trailing bytes": (answer(OK_BODY + b"garbage"), None),
    "deep nesting elsewhere": (
        answer(OK_BODY[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        None,
    ),
    "over the cap, the id first": (
        answer(OK_BODY[:-1] + b', "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
        None,
    ),
    "no token": (answer(b'{"session_id": "{sid}"}'), None),
    "a numeric token": (answer(b'{"session_id": "{sid}", "token": 7}'), None),
}


@pytest.mark.parametrize("name", sorted(MANGLED_ANSWERS))
def test_create_session_ends_a_session_its_unusable_answer_names(fake, name):
    body, session_id = MANGLED_ANSWERS[name]
    fake.next_ids = [session_id] if session_id else []
    fake.script("create", Fault("mangled", body=body))
    with pytest.raises(av.APIResponseError) as info:
        client_for(fake).create_session()
    assert fake.attempts["create"] == 1  # never sent twice
    assert len(fake.created) == 1 and fake.sessions == {}  # made, and ended
    assert info.value.session_id is None  # nothing left for the caller to end


TOLERATED_ANSWERS = {
    # 0.3.0 took the 103 as the answer and dropped the real one
    "103 Early Hints first": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    + answer(OK_BODY),
    "100, 102 and 103 first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing"
    + b"\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    + answer(OK_BODY),
    "a UTF-8 BOM": answer(b"\xef\xbb\xbf" + OK_BODY),  # JSON's bytes may have one
}


@pytest.mark.parametrize("name", sorted(TOLERATED_ANSWERS))
def test_create_session_takes_an_answer_http_and_json_allow(fake, name):
    fake.script("create", Fault("mangled", body=TOLERATED_ANSWERS[name]))
    created = client_for(fake).create_session()
    assert created.session_id in fake.sessions


def test_conflicting_content_lengths_are_sent_once_and_said(fake, sleeps):
    body = answer(OK_BODY, "Content-Length: 10", "Content-Length: 47")
    fake.script("create", Fault("mangled", body=body))
    with pytest.raises(av.APIConnectionError) as info:
        client_for(fake).create_session()
    # 0.3.0 counted this "never sent": three POSTs, three sessions left running
    assert fake.attempts["create"] == 1 and info.value.request_sent is True
    assert "may have been created" in str(info.value)


def test_cleanup_after_an_unusable_answer_stays_inside_the_grace(fake, monkeypatch):
    monkeypatch.setattr(av, "CLEANUP_GRACE", 1.0)
    fake.script("create", Fault("mangled", body=answer(b"{not json")))
    fake.script("terminate", *[Fault("late", delay=10)] * 3)  # the DELETE stalls
    started = time.monotonic()
    with pytest.raises(av.APIResponseError):
        client_for(fake, deadline=0.5).create_session()
    assert time.monotonic() - started < 0.5 + 1.0 + 2.0  # 0.3.0: a new 60 s call


# --------------------------------------------------------------------------- #
# Every blocking step bounded, with threads or without
# --------------------------------------------------------------------------- #


def test_a_stalled_resolver_holds_one_thread_per_host_however_many_calls(
    fake, stalled_resolver
):
    client = av.AvaturnClient(
        KEY, base_url=fake.url.replace("127.0.0.1", "localhost"), deadline=0.3
    )
    before = threading.active_count()
    errors = run_threads(50, lambda: client.say("s1", "hi"))
    assert len(errors) == 50 and all(isinstance(e, av.APITimeoutError) for e in errors)
    assert threading.active_count() - before <= 1  # 0.3.0: one per call, unbounded


ATEXIT = """
import atexit, avaturn_session as av
atexit.register(lambda: print(av.create_session().session_id))
"""


def test_a_call_from_an_atexit_handler_works_without_new_threads(fake, no_env):
    # At interpreter shutdown no thread can start (3.12+): the name lookup
    # then runs in the caller.
    url = fake.url.replace("127.0.0.1", "localhost")  # a name: a lookup
    env = {"AVATURN_API_KEY": KEY, "AVATURN_BASE_URL": url, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", ATEXIT]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in fake.sessions


WARM_AT_EXIT = """
import atexit, json, avaturn_session as av
atexit.register(lambda: print(json.dumps(av.warm())))  # no thread can start (3.12+)
"""


def test_warm_from_an_atexit_handler_warms_in_the_caller(fake, no_env):
    env = {
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fake.url,
        "PYTHONPATH": str(ROOT),
    }
    assert app_report(WARM_AT_EXIT, env) == []


WARM_THEN_FORK = """
import ctypes, json, os, socket, threading, time
import avaturn_session as av
silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks TLS
os.environ["AVATURN_BASE_URL"] = "https://localhost:%d" % silent.getsockname()[1]
threading.Thread(target=lambda: av.warm(deadline=30), daemon=True).start()
time.sleep(0.5)  # the thread is inside warm(), its handshake waiting
pid = ctypes.PyDLL(None).fork()  # no at-fork handlers run
if pid == 0:
    raise SystemExit(0)  # a child that just exits, as a worker does
for _ in range(100):  # 10 s
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.1)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(json.dumps("the child hung at exit"))
    raise SystemExit(0)
print(json.dumps("exited"))
"""


def test_a_child_forked_while_warm_runs_exits_at_once(no_env):
    env = {"AVATURN_API_KEY": KEY, "PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]}
    assert app_report(WARM_THEN_FORK, env) == "exited"


def test_a_callers_http_session_drops_a_header_it_set_to_none(fake):
    theirs = requests.Session()
    theirs.headers["X-Trace"] = None  # requests' way to send no such header
    client = av.AvaturnClient(KEY, base_url=fake.url, http_session=theirs)
    assert client.create_session().session_id in fake.sessions
    assert "x-trace" not in fake.last_headers["create"]


def test_a_1xx_a_callers_session_takes_as_the_answer_says_a_session_may_exist(fake):
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + answer(OK_BODY)
    fake.script("create", Fault("mangled", body=early))
    client = av.AvaturnClient(KEY, base_url=fake.url, http_session=requests.Session())
    with pytest.raises(av.APIResponseError, match="informational") as info:
        client.create_session()
    # the real answer, naming the session, was never read: the error says so
    assert str(info.value).endswith(MAY_HAVE_CREATED) and len(fake.created) == 1


def test_an_interruption_while_the_error_is_built_leaves_no_frame_below(
    fake, monkeypatch
):
    fake.token_factory = lambda n: "SESSTOK-ECHOED-0123456789"
    held = client_for(fake).create_session()
    fake.script("say", Fault("echo"))  # a 500 that quotes the key and the token

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # as a signal would, in the middle of it

    monkeypatch.setattr(av, "_redact_json", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        client_for(fake).say(held.session_id, "hi")
    text = repr(frames_locals(info.value))
    assert KEY not in text and held.token not in text
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_error" not in frames and frames[-1] == "call"


URLLIB3_1 = """
import urllib3.response as response
del response.HTTPResponse.read1, response.BaseHTTPResponse.read1  # 1.26 to 2.1
import avaturn_session
"""


def test_a_copied_file_under_urllib3_1_refuses_at_import():
    command = [sys.executable, "-c", URLLIB3_1]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "ImportError: avaturn_session needs urllib3>=2.2" in done.stderr


def test_the_shared_client_reads_the_environment_once(fake, monkeypatch, no_env):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    other = FakeAvaturn()
    reads = iter([fake.url] + [other.url] * 10)
    real_get = os.environ.get

    def get(name: str, default: Any = None) -> Any:  # the URL changes under it
        return next(reads) if name == "AVATURN_BASE_URL" else real_get(name, default)

    monkeypatch.setattr(os.environ, "get", get)
    created = av.create_session()
    other.close()
    # built from one reading and labelled with that same reading
    assert created.api_host == fake.url and created.session_id in fake.sessions


def test_max_retries_of_any_size_never_overflows(mock, monkeypatch):
    clock = FakeClock(monkeypatch)
    mock.post(SESSIONS + "/s1/tasks", status=503)  # every time
    client = av.AvaturnClient(KEY, max_retries=1100, deadline=86400)
    with pytest.raises(av.InternalServerError):  # 0.3.0: OverflowError at 1024
        client.say("s1", "hi")
    assert len(mock.calls) == 1101 and max(clock.waits) == av.MAX_RETRY_DELAY


@pytest.mark.parametrize("variable", ["OPENAI_ORG_ID", "OPENAI_PROJECT_ID"])
def test_a_header_from_the_environment_is_checked_before_sending(
    monkeypatch, mock, variable
):
    monkeypatch.setenv("OPENAI_API_KEY", S_OPENAI_KEY)
    monkeypatch.setenv(variable, "proj_\u00e9t\u00e9")  # not Latin-1-clean ASCII
    with pytest.raises(av.ConfigurationError, match="printable ASCII"):
        av.mint_openai_client_secret()


def test_a_missing_ca_bundle_is_a_connection_error_never_sent(
    fake, monkeypatch, sleeps
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    url = fake.url.replace("http://", "https://")
    client = av.AvaturnClient(KEY, base_url=url, max_retries=0)
    with pytest.raises(av.APIConnectionError, match="nonexistent") as info:
        client.create_session()
    assert info.value.request_sent is False


# --------------------------------------------------------------------------- #
# What a fresh review found in 0.4.0 before it landed (each test failed then)
# --------------------------------------------------------------------------- #


def test_a_callers_http_session_reads_the_body_within_the_deadline(fake):
    held = client_for(fake).create_session()
    fake.script("say", Fault("body_trickle", delay=0.3))
    theirs = requests.Session()
    client = av.AvaturnClient(
        KEY, base_url=fake.url, http_session=theirs, timeout=5, deadline=1
    )
    started = time.monotonic()
    with pytest.raises(av.APITimeoutError, match="deadline"):
        client.say(held.session_id, "hi")
    assert time.monotonic() - started < 3  # 0.4.0 before: 13 s (16 KiB per check)


def test_a_redirects_body_is_never_read_whole(fake):
    # requests' Session.send reads a redirect's body whole, even unfollowed
    moved = Fault("huge", 307, headers=(("Location", "/elsewhere"),))
    fake.script("create", moved)
    error, peak = peak_traced_bytes(client_for(fake).create_session)
    assert isinstance(error, av.APIResponseError) and "redirect" in str(error)
    assert peak < 10 * 1024 * 1024  # before: the 200 MB body, whole


def test_a_credential_a_server_echoes_in_a_later_call_is_scrubbed(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-echo")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    client = client_for(fake)
    minted = av.mint_openai_client_secret()
    client.create_session(av.openai_realtime_engine(minted))
    header = av.external_engine("wss://e.example/ws", headers={"X-Key": "HDR-VALUE-1"})
    held = client.create_session(header)
    for echoed in (minted, "HDR-VALUE-1"):
        body = json.dumps({"detail": f"engine rejected credential {echoed}"})
        fake.script("say", Fault("raw", 400, body=body.encode()))
        with pytest.raises(av.BadRequestError) as info:
            client.say(held.session_id, "hi")
        assert echoed not in str(info.value) + repr(info.value), echoed


def test_a_session_block_left_on_an_error_ends_it_within_its_own_budget(fake):
    fake.script("terminate", *[Fault("late", delay=15)] * 3)
    client = av.AvaturnClient(KEY, base_url=fake.url)  # the defaults: 30 s reads
    started = time.monotonic()
    with pytest.raises(RuntimeError), client.session(deadline=1, timeout=1):
        raise RuntimeError("the block failed")
    assert time.monotonic() - started < 1 + av.CLEANUP_GRACE + 2  # before: 15 s


def test_a_session_block_names_the_session_it_could_not_end(fake, caplog, monkeypatch):
    client = client_for(fake, max_retries=1)
    fake.script("terminate", *[Fault("status", 500)] * 2)  # a clean block, no end
    with pytest.raises(av.InternalServerError) as info, client.session() as s:
        pass
    assert info.value.session_id == s.session_id
    assert f"session {s.session_id} may still be running" in str(info.value)
    fake.script("terminate", Fault("status", 503))  # Ctrl-C in the retry's wait

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(av, "_sleep", interrupted)
    with pytest.raises(KeyboardInterrupt), client.session() as s:
        pass
    assert f"session {s.session_id} may still be running" in caplog.text


def test_a_request_partly_written_over_tls_counts_as_sent(tls_context):
    # OpenSSL reports nothing of one big write until all of it is written:
    # written a record at a time, what reached the server is counted.
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = listener.accept()
                conn = tls_context.wrap_socket(raw, server_side=True)
                seen.append(conn.recv(65536))  # a first part; then it reads no more

    threading.Thread(target=serve, daemon=True).start()
    url = f"https://localhost:{listener.getsockname()[1]}"
    client = av.AvaturnClient(KEY, base_url=url, timeout=(2, 0.5), deadline=5)
    with pytest.raises(av.APITimeoutError) as info:
        client.say("s1", "x" * 20_000_000)  # more than the socket buffers hold
    listener.close()
    assert info.value.request_sent is True  # before: False, and sent again
    assert len(seen) == 1 and seen[0].startswith(b"POST ")


def test_a_deadline_block_may_end_in_another_copy_of_its_context():
    def view() -> Iterator[int]:  # a streaming response, resumed by a thread pool
        with av.deadline(5):
            yield 1

    stream = view()
    contextvars.copy_context().run(next, stream)
    with contextlib.suppress(StopIteration):
        contextvars.copy_context().run(next, stream)  # before: ValueError


def test_warm_holds_to_a_deadline_block_and_refuses_a_bad_deadline(
    tls_context, monkeypatch
):
    server = FaultServer("tls", 1, "stall", context=tls_context)  # never handshakes
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", server.url)
    started = time.monotonic()
    with av.deadline(0.5):
        assert av.warm() == [server.url]
    assert time.monotonic() - started < 3  # before: 5 s (the connect timeout)
    server.close()
    for bad in (-1, math.nan, "5"):
        with pytest.raises(av.ConfigurationError):
            av.warm(deadline=bad)


def test_server_text_never_brings_terminal_escapes_or_lone_surrogates(fake, caplog):
    fake.next_ids = [r"sess\u001b]0;pwned\u0007\u001b[2J"]  # JSON escapes
    fake.script("create", Fault("mangled", body=answer(b'{"session_id": "{sid}"}')))
    fake.script("terminate", *[Fault("status", 500)] * 3)  # it cannot be ended
    with pytest.raises(av.APIResponseError) as info:
        client_for(fake).create_session()
    assert "\x1b" not in str(info.value) + caplog.text
    fake.script("create", Fault("raw", 400, body=b'{"detail": "cut \\ud83d"}'))
    with pytest.raises(av.BadRequestError) as info:
        client_for(fake).create_session()
    assert str(info.value).encode("utf-8")  # a UTF-8 log file can hold it


# --------------------------------------------------------------------------- #
# What Sentry records, with its defaults; gevent patching after import
# --------------------------------------------------------------------------- #

# A user's app as the README writes it (keys in the environment, engines from
# the helpers), failing every way it can, with Sentry capturing each failure;
# its own process, so that Sentry's global hooks stay there.
SENTRY_APP = """
import json, os, sys
import sentry_sdk
from sentry_sdk.transport import Transport
import avaturn_session as av
from fake_avaturn import Fault, FakeAvaturn

events = []

class Memory(Transport):
    def capture_envelope(self, envelope):
        events.append(envelope.serialize())

sentry_sdk.init(dsn="https://k@127.0.0.1/1", transport=Memory)  # its defaults
fake = FakeAvaturn(os.environ["AVATURN_API_KEY"])
fake.token_factory = lambda n: os.environ["SESSION_TOKEN"]
for name in ("AVATURN", "OPENAI", "CARTESIA"):
    os.environ[name + "_BASE_URL"] = fake.url + ("/v1" if name == "OPENAI" else "")
held = av.create_session(av.text_echo_engine("v1"))
secret = av.mint_openai_client_secret()
cases = {
    "mint openai, echoed": lambda: av.mint_openai_client_secret(),
    "mint cartesia, echoed": lambda: av.mint_cartesia_access_token(),
    "create, echoed": lambda: av.create_session(av.openai_realtime_engine(secret)),
    "bad option": lambda: av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=5),
    "NaN beside a secret": lambda: av.create_session(
        av.openai_realtime_engine(secret), extra={"x": float("nan")}),
    "datetime beside a secret": lambda: av.create_session(
        av.openai_realtime_engine(secret), extra={"x": __import__("datetime").date.today()}),
    "a key with a newline": lambda: av.AvaturnClient(
        os.environ["AVATURN_API_KEY"] + "\\n"),
    "say, reset": lambda: av.say(held.session_id, "hi"),
    "say, cut off": lambda: av.say(held.session_id, "hi"),
    "create, no token": lambda: av.create_session(av.openai_realtime_engine(secret)),
    "create, late": lambda: av.create_session(av.openai_realtime_engine(secret), deadline=0.3),
}
faults = {
    "mint openai, echoed": ("openai", Fault("echo")),
    "mint cartesia, echoed": ("cartesia", Fault("echo")),
    "create, echoed": ("create", Fault("echo")),
    "say, reset": ("say", Fault("reset")),
    "say, cut off": ("say", Fault("truncated")),
    "create, no token": ("create", Fault("mangled",
        body=b'HTTP/1.1 200 OK\\r\\nContent-Length: {len}\\r\\n\\r\\n{"session_id": "{sid}"}')),
    "create, late": ("create", Fault("late", delay=5)),
}
for name, call in cases.items():
    if name in faults:
        fake.script(*faults[name])
    try:
        call()
    except BaseException as exc:
        sentry_sdk.capture_exception(exc)
    else:
        sys.exit(f"{name}: no failure")
sentry_sdk.flush()
print(json.dumps({"events": len(events), "secret": secret,
    "vars": sum(b'"vars"' in e for e in events), "text": [e.decode("utf-8", "replace") for e in events]}))
"""


def test_sentry_with_its_defaults_records_no_secret(no_env):
    pytest.importorskip("sentry_sdk")
    secrets = {
        "AVATURN_API_KEY": S_AVATURN,
        "OPENAI_API_KEY": S_OPENAI_KEY,
        "CARTESIA_API_KEY": S_CARTESIA_KEY,
        "SESSION_TOKEN": S_SESSION,
    }
    path = os.pathsep.join([str(ROOT), str(ROOT / "testing")])
    env = {**secrets, "PYTHONPATH": path, "PATH": os.environ["PATH"]}
    report = app_report(SENTRY_APP, env)
    # every failure recorded, with each frame's locals (Sentry's default)
    assert report["events"] == 11 and report["vars"] == 11
    for event in report["text"]:
        for secret in [*secrets.values(), report["secret"], "cartesia_tok_"]:
            assert secret not in event, (secret, event[:2000])


GEVENT_APP = """
import json, os, sys, time
import avaturn_session as av  # imported first, as a gunicorn config does
from gevent import monkey
monkey.patch_all()
import gevent

def visitor(n):
    seconds = 30 if n % 2 else 0.3  # half of them with a short budget of their own
    try:
        with av.deadline(seconds):
            s = av.create_session()
            av.terminate_session(s.session_id)
        return "ok"
    except av.APITimeoutError:
        return "timeout"

started = time.monotonic()
jobs = [gevent.spawn(visitor, n) for n in range(50)]
gevent.joinall(jobs, raise_error=True)
print(json.dumps({"results": [j.value for j in jobs], "took": time.monotonic() - started}))
"""


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_gevent_patching_after_import_serves_greenlets_each_on_its_own_budget(
    fake, tmp_path, no_env, scheme
):
    pytest.importorskip("gevent")
    env = {"AVATURN_API_KEY": KEY, "AVATURN_BASE_URL": fake.url}
    if scheme == "https":
        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        fake.server.socket = context.wrap_socket(fake.server.socket, server_side=True)
        (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
        env |= {"AVATURN_BASE_URL": fake.url.replace("http:", "https:")}
        env |= {"REQUESTS_CA_BUNDLE": str(tmp_path / "ca.pem")}
    fake.latency = 0.2  # each create waits: greenlets must wait together
    env |= {"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]}
    report = app_report(GEVENT_APP, env)
    # one greenlet's short budget never reached another (0.3.0: a thread-local
    # shared by all greenlets; OverflowError, RecursionError, sessions left)
    assert report["results"] == ["timeout", "ok"] * 25
    assert report["took"] < 10  # together: 50 creates one after another take 20 s
    wait_for(lambda: not fake.sessions)  # the timed-out creates were ended too


# --------------------------------------------------------------------------- #
# Proxies: the key never goes in clear through one
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_loopback_http_base_url_bypasses_environment_proxies(
    fake, monkeypatch, variable
):
    proxy = FakeAvaturn()  # would accept "POST http://127.0.0.1:.../api/v1/sessions"
    try:
        monkeypatch.setenv(variable, proxy.url)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        client_for(fake).create_session()
        av.mint_cartesia_access_token(api_key="ck-proxy", base_url=fake.url)
        av.mint_openai_client_secret(api_key="sk-proxy")
        assert proxy.connections == 0, "a key went through a proxy in clear"
        assert fake.attempts == Counter(create=1, cartesia=1, openai=1)
    finally:
        proxy.close()


# --------------------------------------------------------------------------- #
# No terminal escapes; repr never raises
# --------------------------------------------------------------------------- #

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"


def test_control_characters_never_reach_messages_or_the_cli(
    fake, sleeps, capsys, monkeypatch
):
    body = json.dumps({"detail": f"bad {ESCAPES} thing"}).encode()
    fake.script("create", Fault("raw", status=400, body=body))
    with pytest.raises(av.BadRequestError) as info:
        client_for(fake).create_session()
    assert not re.search(r"[\x00-\x1f\x7f]", str(info.value))
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    fake.script("terminate", Fault("raw", status=400, body=body))
    assert av.main(["terminate", "s1"]) == 1
    err = capsys.readouterr().err
    assert err.endswith("\n") and not re.search(r"[\x00-\x1f\x7f]", err[:-1])
    assert "bad" in err


REPR_CLASSES = [  # but the session, a tuple: it is never half built
    getattr(av, name)
    for name in av.__all__
    if isinstance(getattr(av, name), type) and name != "AvaturnSession"
] + [av._Transport, av._Attempt, av._Payload]


@pytest.mark.parametrize("cls", REPR_CLASSES, ids=lambda c: c.__name__)
def test_repr_never_raises_even_half_constructed(cls):
    obj = cls.__new__(cls)
    assert isinstance(repr(obj), str)
    if isinstance(obj, BaseException):
        assert isinstance(str(obj), str)


# --------------------------------------------------------------------------- #
# Soak: 2,000 lifecycles under seeded faults
# --------------------------------------------------------------------------- #

SOAK_FAULTS = [
    Fault("status", 503),
    Fault("status", 429, retry_after="0"),
    Fault("status", 500),
    Fault("status", 502),
    Fault("reset"),
    Fault("truncated"),
    Fault("empty"),
    Fault("html"),
    Fault("late", delay=0.3),
]


@pytest.mark.slow
def test_soak_2000_lifecycles_with_seeded_faults(fake, sleeps):
    fake.set_chaos(seed=20261124, rate=0.10, faults=SOAK_FAULTS)
    client = client_for(fake, timeout=(2.0, 0.15))
    held_alive: set[str] = set()  # ids the caller was told may still be running
    received: set[str] = set()
    failures: Counter[str] = Counter()
    for i in range(2000):
        try:
            created = client.create_session(extra={"ref": i})
        except Exception as exc:  # noqa: BLE001 - the check is that it is typed
            assert isinstance(exc, av.AvaturnError), repr(exc)
            failures[type(exc).__name__] += 1
            continue
        received.add(created.session_id)
        try:
            client.say(created.session_id, f"text {i}")
        except Exception as exc:  # noqa: BLE001 - the check is that it is typed
            assert isinstance(exc, av.AvaturnError), repr(exc)
            failures[type(exc).__name__] += 1
        try:
            client.terminate_session(created.session_id)
        except Exception as exc:  # noqa: BLE001 - the check is that it is typed
            assert isinstance(exc, av.AvaturnError), repr(exc)
            failures[type(exc).__name__] += 1
            held_alive.add(created.session_id)
    refs = Counter(s["body"]["ref"] for s in fake.created.values())
    assert max(refs.values()) == 1, "a create was replayed"
    texts = Counter(text for _, text in fake.spoken)
    assert max(texts.values()) == 1, "a text was spoken twice"
    lost_creates = set(fake.created) - received
    alive = set(fake.sessions)
    assert alive - lost_creates <= held_alive
    assert sum(failures.values()) > 100  # the faults really were injected
    print(
        f"soak: {dict(failures)}, lost creates {len(lost_creates)}, alive {len(alive)}"
    )


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def run_cli(capsys, *argv: str) -> tuple[int, Any, str]:
    code = av.main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_cli_dry_run_openai_needs_no_key_or_network(capsys, no_env, mock):
    code, out, err = run_cli(
        capsys,
        "create",
        "--dry-run",
        "--openai",
        "--voice",
        "marin",
        "--user-absent-timeout",
        "30",
    )
    assert (code, err) == (0, "")
    assert out == {
        "method": "POST",
        "url": "https://api.avaturn.live/api/v1/sessions",
        "json": {
            "conversation_engine": {
                "type": "openai-realtime",
                "client_secret": "<minted at run time>",
            },
            "user_absent_timeout": 30,
        },
        # what the client secret would be minted for
        "mint": {
            "openai": {
                "type": "realtime",
                "model": "gpt-realtime",
                "audio": {"output": {"voice": "marin"}},
            }
        },
    }


def test_cli_dry_run_masks_secrets_in_engine_json(capsys, no_env, monkeypatch, mock):
    monkeypatch.setenv("AVATURN_BASE_URL", "http://127.0.0.1:9")
    engine = {
        "type": "external",
        "url": "wss://b/ws",
        "headers": {"X-Key": "hdr-secret"},
    }
    code, out, _ = run_cli(
        capsys, "create", "--dry-run", "--engine", json.dumps(engine)
    )
    assert code == 0
    assert out["url"] == "http://127.0.0.1:9/api/v1/sessions"
    assert out["json"]["conversation_engine"]["headers"] == {"X-Key": "***"}


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_cli_dry_run_masks_a_credential_under_any_usual_name(capsys, no_env, name):
    engine = {"type": "qwen-omni", "config": {name: "CRED-SENTINEL"}}
    code, out, _ = run_cli(
        capsys, "create", "--dry-run", "--engine", json.dumps(engine)
    )
    assert code == 0 and out["json"]["conversation_engine"]["config"] == {name: "***"}


def test_cli_dry_run_cartesia_and_text_echo(capsys, no_env, mock):
    _, out, _ = run_cli(capsys, "create", "--dry-run", "--cartesia-agent", "agent_9")
    assert out["json"]["conversation_engine"] == {
        "type": "cartesia",
        "access_token": "<minted at run time>",
        "agent_id": "agent_9",
    }
    _, out, _ = run_cli(
        capsys,
        "create",
        "--dry-run",
        "--text-echo-voice",
        "v1",
        "--background",
        "transparent",
    )
    assert out["json"] == {
        "conversation_engine": av.text_echo_engine("v1"),
        "background": "transparent",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--dry-run", "--max-duration", "5"],
        ["create", "--dry-run", "--engine", "{not json"],
        ["create", "--dry-run", "--engine", '{"type": "openai-realtime"}'],
        ["create", "--dry-run", "--voice", "marin"],
        ["create", "--openai", "--cartesia-agent", "a"],
        ["create", "--background", "blue"],
        ["launch"],
        [],
    ],
)
def test_cli_usage_and_configuration_errors_exit_2(capsys, no_env, mock, argv):
    code = av.main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("avaturn-session: error: ")


def test_cli_configuration_error_is_one_line(capsys, no_env, mock):
    code, _, err = run_cli(
        capsys, "create", "--dry-run", "--engine", '{"type": "cartesia"}'
    )
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("avaturn-session: error: ConfigurationError: ")


def test_cli_create_say_terminate_against_fake(capsys, fake, monkeypatch, no_env):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    code, out, _ = run_cli(
        capsys, "create", "--text-echo-voice", "v1", "--max-duration", "600"
    )
    assert code == 0
    assert set(out) == {"session_id", "token", "api_host"}
    assert out["api_host"] == fake.url
    assert fake.created[out["session_id"]]["body"]["max_duration"] == 600
    code, said, _ = run_cli(capsys, "say", out["session_id"], "Hello there")
    assert code == 0 and said["task_id"].startswith("task_")
    assert fake.spoken == [(out["session_id"], "Hello there")]
    assert run_cli(capsys, "terminate", out["session_id"])[:2] == (
        0,
        {"terminated": True},
    )
    assert run_cli(capsys, "terminate", out["session_id"])[:2] == (
        0,
        {"terminated": False},
    )


def test_cli_create_openai_mints_then_creates(capsys, fake, monkeypatch, no_env):
    for name, value in [
        ("AVATURN_API_KEY", KEY),
        ("AVATURN_BASE_URL", fake.url),
        ("OPENAI_API_KEY", "sk-1"),
        ("OPENAI_BASE_URL", fake.url + "/v1"),
    ]:
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(
        capsys, "create", "--openai", "--voice", "cedar", "--instructions", "Be brief."
    )
    assert code == 0, err
    assert fake.minted_openai[0]["session"] == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Be brief.",
        "audio": {"output": {"voice": "cedar"}},
    }
    engine = fake.created[out["session_id"]]["body"]["conversation_engine"]
    assert engine["type"] == "openai-realtime" and engine["client_secret"].startswith(
        "ek_fake_"
    )


def test_cli_create_cartesia_mints_then_creates(capsys, fake, monkeypatch, no_env):
    for name, value in [
        ("AVATURN_API_KEY", KEY),
        ("AVATURN_BASE_URL", fake.url),
        ("CARTESIA_API_KEY", "ck-1"),
        ("CARTESIA_BASE_URL", fake.url),
    ]:
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, "create", "--cartesia-agent", "agent_7")
    assert code == 0, err
    engine = fake.created[out["session_id"]]["body"]["conversation_engine"]
    assert engine == {
        "type": "cartesia",
        "access_token": engine["access_token"],
        "agent_id": "agent_7",
    }
    assert engine["access_token"].startswith("cartesia_tok_")


def test_cli_validates_before_minting(capsys, fake, monkeypatch, no_env):
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    code, _, err = run_cli(capsys, "create", "--openai")
    assert code == 2 and "AVATURN_API_KEY" in err
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    code, _, err = run_cli(capsys, "create", "--openai", "--user-absent-timeout", "3")
    assert code == 2 and "user_absent_timeout" in err
    assert fake.attempts["openai"] == 0


def test_cli_api_error_exits_1_with_one_line(capsys, fake, monkeypatch, no_env):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    code, out, err = run_cli(capsys, "say", "sess_missing", "hi")
    assert (code, out) == (1, None)
    assert err == (
        "avaturn-session: error: NotFoundError: 404 Not Found (request req_404): "
        "Session not found\n"
    )


def test_cli_help_lists_every_environment_variable_it_reads(capsys):
    assert av.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (
        "AVATURN_API_KEY",
        "AVATURN_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CARTESIA_API_KEY",
        "CARTESIA_BASE_URL",
    ):
        assert name in out


@pytest.mark.parametrize("command", ["create", "say", "terminate"])
def test_cli_help_has_an_example(capsys, command):
    assert av.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "example" in out and f"avaturn-session {command}" in out


def test_cli_runs_as_python_dash_m(no_env):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avaturn_session",
            "create",
            "--dry-run",
            "--text-echo-voice",
            "v1",
        ],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        env={"PATH": "", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert (
        json.loads(result.stdout)["json"]["conversation_engine"]["type"] == "text-echo"
    )


# --------------------------------------------------------------------------- #
# README: every Python snippet runs
# --------------------------------------------------------------------------- #


def readme_sections() -> dict[str, list[str]]:
    """The README's Python snippets by section: a section's run in one namespace."""
    text = (ROOT / "README.md").read_text()
    sections = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        snippets = re.findall(r"```python\n(.*?)```", part, flags=re.DOTALL)
        if snippets:
            sections[part.splitlines()[0]] = snippets
    return sections


def run_readme(section: str, namespace: dict[str, Any] | None = None) -> Any:
    """Run a README section's snippets in order, as a module of their own."""
    module = types.ModuleType("readme_snippet")
    module.__dict__.update(namespace or {})
    with contextlib.redirect_stdout(io.StringIO()):
        for index, snippet in enumerate(readme_sections()[section]):
            code = compile(snippet, f"README.md:{section}#{index}", "exec")
            exec(code, module.__dict__)  # noqa: S102 - running the README's own snippets is the test
    return module


@pytest.fixture
def readme_env(fake, monkeypatch, no_env, sleeps):
    for name, value in [
        ("AVATURN_API_KEY", KEY),
        ("AVATURN_BASE_URL", fake.url),
        ("OPENAI_API_KEY", "sk-readme"),
        ("OPENAI_BASE_URL", fake.url + "/v1"),
        ("CARTESIA_API_KEY", "ck-readme"),
        ("CARTESIA_BASE_URL", fake.url),
        ("FLASK_SECRET_KEY", "readme-secret"),
    ]:
        monkeypatch.setenv(name, value)
    return fake


def test_readme_has_sections_a_user_needs_in_order_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 380
    headings = re.findall(r"^## (.*)$", text, flags=re.MULTILINE)
    wanted = [
        "Install",
        "Quick start",
        "The browser side",
        "Flask and Django",
        "In a notebook",
        "Errors",
        "Settings",
        "Production checklist",
        "Testing your app",
        "Compatibility",
    ]
    assert [h for h in headings if h in wanted] == wanted


def test_readme_quick_start_runs_and_ends_every_session(readme_env):
    run_readme("Quick start")
    assert len(readme_env.created) == 3 and readme_env.sessions == {}
    assert [text for _, text in readme_env.spoken] == ["Welcome!"]


def test_readme_notebook_shows_a_live_session_then_ends_it(readme_env):
    section = readme_sections()["In a notebook"]
    namespace: dict[str, Any] = {}
    exec(compile(section[0], "README.md:notebook#0", "exec"), namespace)  # noqa: S102
    live = namespace["s"]
    assert list(readme_env.sessions) == [live.session_id]  # alive as the cell's value
    shown = html.unescape(live._repr_html_())
    assert live.token in shown and '"audio": true' in shown
    exec(compile(section[1], "README.md:notebook#1", "exec"), namespace)  # noqa: S102
    assert readme_env.sessions == {}


def readme_flask_app() -> Any:
    return run_readme("Flask and Django").app


def test_readme_flask_snippet_is_safe_to_copy(readme_env, caplog):
    app = readme_flask_app()
    alice, mallory = app.test_client(), app.test_client()
    first = alice.post("/avatar/session", json={}).get_json()
    assert first["sessionToken"] == readme_env.sessions[first["session_id"]]["token"]
    second = alice.post("/avatar/session", json={}).get_json()  # starting again...
    assert list(readme_env.sessions) == [second["session_id"]]  # ...ended the first
    sid = second["session_id"]
    assert mallory.delete(f"/avatar/session/{sid}").status_code == 404
    assert mallory.post(f"/avatar/session/{sid}/end").status_code == 404
    cross = alice.post(
        "/avatar/session", json={}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross.status_code == 403 and list(readme_env.sessions) == [sid]
    assert alice.post(f"/avatar/session/{sid}/end").get_json() == {"ended": True}
    assert readme_env.sessions == {}
    # a failure reaches the visitor as a generic message, the detail the log
    readme_env.script(
        "create", Fault("raw", status=401, body=b'{"detail": "Invalid API key"}')
    )
    failed = alice.post("/avatar/session", json={})
    assert failed.status_code == 502
    assert failed.get_json() == {
        "error": "The avatar is unavailable. Please try again."
    }
    assert "401 Unauthorized" in caplog.text and "Invalid API key" in caplog.text


@pytest.mark.parametrize("shell", ["clean", "pointing at a local fake"])
def test_readme_testing_example_passes_as_a_user_runs_it(tmp_path, shell):
    # The README's app as app.py, its test as test_app.py, run by pytest in a
    # shell that has none of the variables, or has a developer's local fake in
    # them: the test passes either way, with no network.
    snippets = readme_sections()
    app = next(s for s in snippets["Flask and Django"] if "Flask(__name__)" in s)
    (tmp_path / "app.py").write_text(app)
    (tmp_path / "test_app.py").write_text("\n".join(snippets["Testing your app"]))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    if shell != "clean":
        env |= {"AVATURN_BASE_URL": closed_port_url(), "AVATURN_API_KEY": "k"}
        env |= {"OPENAI_BASE_URL": closed_port_url() + "/v1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "test_app.py"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 passed" in done.stdout


# --------------------------------------------------------------------------- #
# Examples: Flask and Django, through the frameworks' own test clients
# --------------------------------------------------------------------------- #


def load_example(name: str) -> Any:
    """A fresh import of an example app (Django's settings stay per process)."""
    sys.modules.pop(name, None)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.fixture
def example_env(fake, monkeypatch, no_env):
    """Keys for the examples; Avaturn and OpenAI answer through `responses` mocks."""
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    monkeypatch.setenv("FLASK_SECRET_KEY", "flask-test-secret")
    monkeypatch.setenv("DJANGO_SECRET_KEY", DJANGO_SECRET)
    return fake


# Every test that loads the Django example sets this (its settings load once).
DJANGO_SECRET = "django-test-secret"


def test_django_example_signs_cookies_with_the_configured_key(example_env):
    load_example("django_app")
    from django.conf import settings

    assert settings.SECRET_KEY == DJANGO_SECRET


def created(mock: responses.RequestsMock, sid: str) -> None:
    """The example's start: an OpenAI mint, then the create."""
    mock.post(OPENAI_SECRETS, json={"value": f"ek_{sid}", "expires_at": 2000000000})
    mock.post(SESSIONS, json={"session_id": sid, "token": f"tok_{sid}"})


def avaturn_calls(mock: responses.RequestsMock) -> list[str]:
    return [c.request.method for c in mock.calls if c.request.url.startswith(API)]


def check_example_created_session(mock: responses.RequestsMock) -> None:
    minted = json.loads(mock.calls[0].request.body)
    sent = json.loads(mock.calls[1].request.body)
    assert minted["session"]["audio"] == {"output": {"voice": "marin"}}
    assert sent["user_absent_timeout"] == 30
    assert sent["conversation_engine"] == {
        "type": "openai-realtime",
        "client_secret": "ek_s1",
    }


class FlaskVisitor:
    """One browser's worth of cookies against the Flask example."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()

    def start(self) -> Any:
        return self.client.post("/avatar/session", json={})

    def say(self, sid: str, text: str = "Hello") -> Any:
        return self.client.post(f"/avatar/session/{sid}/say", json={"text": text})

    def end(self, sid: str) -> Any:
        return self.client.delete(f"/avatar/session/{sid}", json={})

    def leave(self, sid: str) -> Any:
        return self.client.post(f"/avatar/session/{sid}/end", data="")


class DjangoVisitor:
    """One browser's worth of cookies against the Django example, CSRF checks on."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client(enforce_csrf_checks=True)
        page = self.client.get("/").content.decode()
        match = re.search(
            r'<script id="config" type="application/json">(.*?)</script>', page
        )
        assert match, page[:300]
        self.config = json.loads(match.group(1))
        self.headers = {"HTTP_X_CSRFTOKEN": self.config["csrfToken"]}

    def start(self) -> Any:
        return self.client.post(
            "/avatar/session", data={}, content_type="application/json", **self.headers
        )

    def say(self, sid: str, text: str = "Hello") -> Any:
        return self.client.post(
            f"/avatar/session/{sid}/say",
            data={"text": text},
            content_type="application/json",
            **self.headers,
        )

    def end(self, sid: str) -> Any:
        return self.client.delete(f"/avatar/session/{sid}", **self.headers)

    def leave(self, sid: str) -> Any:
        token = self.config["csrfToken"]
        return self.client.post(
            f"/avatar/session/{sid}/end", data={"csrfmiddlewaretoken": token}
        )


@pytest.fixture(params=["flask", "django"])
def visitor(request, example_env):
    """A factory of visitors (separate cookies) for either example."""
    if request.param == "flask":
        app = load_example("flask_app").app
        return lambda: FlaskVisitor(app)
    load_example("django_app")
    return DjangoVisitor


def json_of(response: Any) -> Any:
    return json.loads(
        response.get_data() if hasattr(response, "get_data") else response.content
    )


def test_example_full_lifecycle(visitor, mock, example_env):
    created(mock, "s1")
    mock.post(
        SESSIONS + "/s1/tasks",
        match=[matchers.json_params_matcher({"text": "Hello"})],
        json={"task_id": "task_1"},
    )
    mock.delete(SESSIONS + "/s1", status=204)
    alice = visitor()
    started = alice.start()
    assert started.status_code == 200
    assert json_of(started) == {
        "session_id": "s1",
        "sessionToken": "tok_s1",
        "apiHost": API,
    }
    check_example_created_session(mock)
    assert json_of(alice.say("s1")) == {"task_id": "task_1"}
    assert json_of(alice.end("s1")) == {"terminated": True}
    assert alice.end("s1").status_code == 404  # no longer hers: nothing sent


def test_example_sessions_belong_to_their_visitor(visitor, mock):
    created(mock, "s1")
    alice, mallory = visitor(), visitor()
    alice.start()
    for attempt in (mallory.say("s1"), mallory.end("s1"), mallory.leave("s1")):
        assert attempt.status_code == 404
        assert KEY not in str(json_of(attempt))
    assert avaturn_calls(mock) == ["POST"]  # only Alice's create reached Avaturn


def test_example_one_live_session_per_visitor(visitor, mock):
    created(mock, "s1")
    mock.delete(SESSIONS + "/s1", status=204)
    created(mock, "s2")
    alice = visitor()
    alice.start()
    assert json_of(alice.start())["session_id"] == "s2"
    assert avaturn_calls(mock) == ["POST", "DELETE", "POST"]
    assert alice.say("s1").status_code == 404


def test_example_tab_close_beacon_ends_the_session(visitor, mock):
    created(mock, "s1")
    mock.delete(SESSIONS + "/s1", status=204)
    alice = visitor()
    alice.start()
    left = alice.leave("s1")
    assert left.status_code == 200 and json_of(left) == {"terminated": True}


def test_example_errors_reach_visitors_as_a_generic_message(
    visitor, mock, sleeps, caplog
):
    mock.post(OPENAI_SECRETS, json={"value": "ek_1", "expires_at": 2000000000})
    mock.post(SESSIONS, status=401, json={"detail": f"Invalid API key {KEY}"})
    failed = visitor().start()
    assert failed.status_code == 502
    assert json_of(failed) == {
        "error": "avatar_unavailable",
        "message": "The avatar is unavailable right now. Please try again later.",
    }
    # the detail is for the operator, in the log, with the key masked
    assert "AuthenticationError: 401 Unauthorized" in caplog.text
    assert "Invalid API key ***" in caplog.text and KEY not in caplog.text


def test_flask_example_refuses_cross_site_requests(example_env, mock):
    client = load_example("flask_app").app.test_client()
    refusals = [
        client.post("/avatar/session", data="x", content_type="text/plain"),
        client.post(
            "/avatar/session", json={}, headers={"Sec-Fetch-Site": "cross-site"}
        ),
        client.post(
            "/avatar/session", json={}, headers={"Origin": "https://evil.example"}
        ),
        client.post("/avatar/session/s1/end", headers={"Sec-Fetch-Site": "cross-site"}),
    ]
    assert [r.status_code for r in refusals] == [415, 403, 403, 403]
    assert len(mock.calls) == 0


def test_django_example_keeps_csrf_protection_on(example_env, mock):
    load_example("django_app")
    from django.test import Client

    forged = Client(enforce_csrf_checks=True).post(
        "/avatar/session", data={}, content_type="application/json"
    )
    assert forged.status_code == 403
    assert len(mock.calls) == 0


def test_flask_example_signs_cookies_with_the_configured_key(example_env):
    assert load_example("flask_app").app.secret_key == "flask-test-secret"


@pytest.mark.parametrize(
    ("name", "variable", "debug"),
    [
        ("flask_app", "FLASK_SECRET_KEY", "FLASK_DEBUG"),
        ("django_app", "DJANGO_SECRET_KEY", "DJANGO_DEBUG"),
    ],
)
def test_example_refuses_to_start_without_its_secret_key(
    example_env, monkeypatch, name, variable, debug
):
    monkeypatch.delenv(variable)
    load = [sys.executable, "-c", f"import {name}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'examples'}"}
    refused = subprocess.run(load, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert f"RuntimeError: {variable} is not set" in refused.stderr
    # in debug mode (one process) a random key will do, with a warning
    env[debug] = "1"
    debugging = subprocess.run(
        load, env=env, capture_output=True, text=True, check=False
    )
    assert debugging.returncode == 0, debugging.stderr
    assert f"{variable} is not set: a random key" in debugging.stderr


GUNICORN_TARGETS = {"flask": "flask_app:app", "django": "django_app:application"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn(fake: FakeAvaturn, target: str, **env: str) -> Any:
    """The README's command: 4 workers, the examples' config (warm() in post_worker_init)."""
    executable = Path(sys.executable).with_name("gunicorn")
    assert executable.exists(), "gunicorn is in the test extra"
    port = free_port()
    command = [str(executable), "-w", "4", "-c", "examples/gunicorn.conf.py"]
    command += ["--chdir", "examples", "--bind", f"127.0.0.1:{port}", target]
    variables = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fake.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake.url + "/v1",
        **env,
    }
    server = subprocess.Popen(
        command, cwd=ROOT, env=variables, stderr=subprocess.PIPE, text=True
    )
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(20)


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_example_serves_its_visitors_under_gunicorn_with_4_workers(
    fake, no_env, framework
):
    keys = {"FLASK_SECRET_KEY": "gunicorn-test", "DJANGO_SECRET_KEY": "gunicorn-test"}
    with gunicorn(fake, GUNICORN_TARGETS[framework], **keys) as (_, url):
        # post_worker_init: each worker opened its Avaturn and OpenAI connections
        # (both on this fake) before its first visitor, and sent nothing
        until(lambda: fake.connections >= 8, "4 warmed workers")
        assert not fake.attempts
        ended = []
        for _ in range(12):  # a visitor's requests land on any of the workers
            visitor = requests.Session()
            page = visitor.get(url + "/", timeout=10)  # queued until a worker is up
            config = json.loads(
                re.search(r'id="config" type="application/json">(.*?)<', page.text)[1]
            )
            headers = {"X-CSRFToken": config.get("csrfToken", "")}
            started = visitor.post(url + "/avatar/session", json={}, headers=headers)
            sid = started.json()["session_id"]
            end = visitor.delete(f"{url}/avatar/session/{sid}", headers=headers)
            ended.append(end.json())
        assert ended == [{"terminated": True}] * 12
        assert len(fake.created) == 12 and fake.sessions == {}


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_example_under_gunicorn_refuses_to_start_without_its_secret_key(
    fake, no_env, framework
):
    variable = f"{framework.upper()}_SECRET_KEY"
    with gunicorn(fake, GUNICORN_TARGETS[framework]) as (server, _):
        assert server.wait(60) != 0
        assert f"{variable} is not set" in server.stderr.read()


@pytest.mark.parametrize("name", ["flask_app", "django_app"])
def test_example_page_pins_the_sdk_and_holds_no_key(example_env, monkeypatch, name):
    if name == "flask_app":
        page = load_example(name).app.test_client().get("/").get_data(as_text=True)
    else:
        load_example(name)
        from django.test import Client

        page = Client().get("/").content.decode()
    assert "@avaturn-live/web-sdk@0.3.7" in page and "AvaturnHead" in page
    assert "sendBeacon" in page and "pagehide" in page
    assert KEY not in page and "sk-example" not in page
    monkeypatch.setenv("AVATURN_SDK_URL", "http://127.0.0.1:1/sdk.js</script>")
    if name == "flask_app":
        page = load_example(name).app.test_client().get("/").get_data(as_text=True)
    else:
        page = Client().get("/").content.decode()
    assert "http://127.0.0.1:1/sdk.js\\u003c/script\\u003e" in page


# --------------------------------------------------------------------------- #
# In a real browser: the Web SDK end to end (headless Chromium, the real SDK)
# --------------------------------------------------------------------------- #

SDK_CACHE = Path(
    os.environ.get("AVATURN_SDK_CACHE")
    or Path.home() / ".cache" / "avaturn-session-tests"
)
SDK_FILE = SDK_CACHE / "node_modules" / "@avaturn-live" / "web-sdk" / "dist" / "main.js"
# The README's browser set-up command (CI runs it from there).
BROWSER_SETUP = (
    "apt-get install -y chromium chromium-driver && npm install --no-save "
    "--prefix ~/.cache/avaturn-session-tests @avaturn-live/web-sdk@0.3.7"
)
# As the workplace's own probe runs it: no sandbox as root, nothing fetched on start.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)
OPENAI_KEY = "sk-BROWSER-SENTINEL"


def need_for_browser(ok: object, what: str) -> None:
    """Skip with the install command on a developer machine; fail in CI."""
    if ok:
        return
    reason = f"browser test needs {what}: {BROWSER_SETUP}"
    if os.environ.get("CI") == "true":
        pytest.fail("a browser test would be skipped in CI: " + reason)
    pytest.skip(reason)


@pytest.fixture
def browsers(tmp_path):
    """Launch headless Chromium windows, each a separate visitor (own profile)."""
    need_for_browser(
        shutil.which("chromium") and shutil.which("chromedriver"), "Chromium"
    )
    need_for_browser(SDK_FILE.is_file(), "@avaturn-live/web-sdk 0.3.7 from npm")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need_for_browser(False, "selenium (pip install '.[test]')")
    launched: list[Any] = []

    def launch() -> Any:
        options = Options()
        options.binary_location = shutil.which("chromium")
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile{len(launched)}'}")
        service = Service(executable_path=shutil.which("chromedriver"))
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        launched.append(driver)
        return driver

    yield launch
    for driver in launched:
        driver.quit()


class Recorded:
    """A WSGI app that keeps every body it sends to a browser."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = b"".join(self.app(environ, start_response))
        self.sent.append(body)
        return [body]


@pytest.fixture
def serve_wsgi():
    """Serve WSGI apps on 127.0.0.1 (threaded werkzeug); returns their base URL."""
    from werkzeug.serving import make_server

    servers: list[Any] = []

    def serve(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()


def until(condition: Any, what: str, limit: float = 20.0) -> Any:
    """Wait for something a real browser does; fail with `what` if it never does."""
    wait_for(condition, limit)
    value = condition()
    assert value, f"timed out waiting for {what}"
    return value


@pytest.fixture(params=["flask", "django"])
def browser_app(request, fake, monkeypatch, serve_wsgi, no_env):
    """An example app on a real port, its Avaturn, OpenAI and SDK on the fake."""
    fake.sdk_file = SDK_FILE
    for name, value in {
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fake.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake.url + "/v1",
        "AVATURN_SDK_URL": fake.url + "/_test/sdk.js",
        "FLASK_SECRET_KEY": "browser-test-secret",
        "DJANGO_SECRET_KEY": DJANGO_SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    if request.param == "flask":
        app: Any = load_example("flask_app").app
    else:
        load_example("django_app")
        from django.core.handlers.wsgi import WSGIHandler

        app = WSGIHandler()
    recorded = Recorded(app)
    return fake, serve_wsgi(recorded), recorded


def live_session(fake: FakeAvaturn, other_than: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    return until(
        lambda: next((s for s in fake.sessions if s not in other_than), None),
        "a session",
    )


def test_browser_example_end_to_end(browsers, browser_app):
    from selenium.webdriver.common.by import By

    fake, url, recorded = browser_app
    alice = browsers()
    alice.get(url + "/")
    alice.find_element(By.ID, "start").click()
    first = live_session(fake)
    # The SDK in the page asked the fake for the session with exactly the
    # token our backend received, cross-origin from the page's origin.
    call = until(lambda: fake.sdk_calls and fake.sdk_calls[0], "the SDK's first call")
    assert call == {
        "method": "GET",
        "path": "/_sdk/v0/sessions",
        "token": fake.sessions[first]["token"],
        "origin": url,
    }

    # Another visitor can neither drive nor end it, and nothing is forwarded.
    mallory = browsers()
    mallory.get(url + "/")
    attempts_before = dict(fake.attempts)
    statuses = mallory.execute_async_script(
        """
        const [sid, done] = arguments;
        const csrf = JSON.parse(document.getElementById("config").textContent).csrfToken;
        const headers = {"Content-Type": "application/json"};
        if (csrf) headers["X-CSRFToken"] = csrf;
        const form = new URLSearchParams(csrf ? {csrfmiddlewaretoken: csrf} : {});
        Promise.all([
          fetch(`/avatar/session/${sid}/say`, {method: "POST", headers, body: '{"text": "hi"}'}),
          fetch(`/avatar/session/${sid}`, {method: "DELETE", headers, body: "{}"}),
          fetch(`/avatar/session/${sid}/end`, {method: "POST", body: form}),
        ]).then((rs) => done(rs.map((r) => r.status)));
        """,
        first,
    )
    assert statuses == [404, 404, 404]
    assert first in fake.sessions
    assert dict(fake.attempts) == attempts_before

    # Stop works while the SDK is still connecting (no video here: it never joins).
    until(lambda: alice.find_element(By.ID, "stop").is_enabled(), "Stop to be enabled")
    alice.find_element(By.ID, "stop").click()
    until(lambda: first not in fake.sessions, "Stop to end the session")

    # Closing the tab ends the session too (pagehide + sendBeacon).
    alice.find_element(By.ID, "start").click()
    second = live_session(fake, {first})
    page_tab = alice.current_window_handle
    alice.switch_to.new_window("tab")
    alice.switch_to.window(page_tab)
    alice.close()
    until(lambda: second not in fake.sessions, "closing the tab to end the session")
    assert fake.sessions == {}

    # Neither key ever reached a browser.
    received = b"".join(recorded.sent + fake.to_browser)
    assert received and KEY.encode() not in received
    assert OPENAI_KEY.encode() not in received


@pytest.fixture
def notebook_host(fake, monkeypatch, no_env):
    """A page on another origin that shows a session's `_repr_html_`, as Jupyter does."""
    fake.sdk_file = SDK_FILE
    monkeypatch.setenv("AVATURN_SDK_URL", fake.url + "/_test/sdk.js")
    host = FakeAvaturn()
    yield host
    host.close()


def test_browser_notebook_view_connects_with_the_session_token(
    browsers, fake, notebook_host
):
    from selenium.webdriver.common.by import By

    created = client_for(fake).create_session()
    notebook_host.page = (
        '<!doctype html><meta charset="utf-8"><body>'
        + created._repr_html_()
        + "</body>"
    )
    browser = browsers()
    browser.get(notebook_host.url + "/_test/page")
    call = until(lambda: fake.sdk_calls and fake.sdk_calls[0], "the SDK's first call")
    assert call["token"] == created.token and call["origin"] == notebook_host.url
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    status = browser.find_element(By.ID, "status").text
    assert status.startswith(("Connecting", "Could not connect", "Connected"))
    assert KEY not in browser.page_source and KEY not in notebook_host.page


def test_browser_notebook_view_says_when_the_sdk_cannot_load(
    browsers, fake, notebook_host, monkeypatch
):
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("AVATURN_SDK_URL", fake.url + "/_test/missing.js")
    created = client_for(fake).create_session()
    notebook_host.page = (
        '<!doctype html><meta charset="utf-8"><body>' + created._repr_html_()
    )
    browser = browsers()
    browser.get(notebook_host.url + "/_test/page")
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    status = until(
        lambda: (
            "Could not load" in (text := browser.find_element(By.ID, "status").text)
            and text
        ),
        "the SDK load failure message",
    )
    assert "Could not load the Avaturn Web SDK" in status
    assert not [c for c in fake.sdk_calls if c["path"].startswith("/_sdk/")]


def test_browser_readme_page_with_the_readme_flask_app(
    browsers, readme_env, serve_wsgi
):
    """The README's browser snippet on the README's Flask backend, in Chromium."""
    from selenium.webdriver.common.by import By

    fake = readme_env
    fake.sdk_file = SDK_FILE
    snippet = re.search(
        r"```html\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL
    )[1]
    assert av.WEB_SDK_URL in snippet  # the pinned SDK (served here by the fake)
    page = '<!doctype html><meta charset="utf-8"><body>' + snippet.replace(
        av.WEB_SDK_URL, fake.url + "/_test/sdk.js"
    )
    app = readme_flask_app()
    app.add_url_rule("/", "page", lambda: page)
    url = serve_wsgi(app)
    alice = browsers()
    alice.get(url + "/")
    alice.find_element(By.ID, "start").click()
    first = live_session(fake)
    call = until(lambda: fake.sdk_calls and fake.sdk_calls[0], "the SDK's first call")
    assert call["token"] == fake.sessions[first]["token"] and call["origin"] == url
    alice.find_element(By.ID, "start").click()  # starting again ends the first
    second = live_session(fake, {first})
    until(lambda: first not in fake.sessions, "a new start to end the first")
    alice.find_element(By.ID, "stop").click()
    until(lambda: second not in fake.sessions, "Stop to end the session")
    alice.find_element(By.ID, "start").click()
    third = live_session(fake, {first, second})
    page_tab = alice.current_window_handle
    alice.switch_to.new_window("tab")
    alice.switch_to.window(page_tab)
    alice.close()  # the tab goes away: the beacon ends the session
    until(lambda: third not in fake.sessions, "closing the tab to end the session")
    assert fake.sessions == {}


def test_browser_notebook_view_of_an_ended_session_says_so(
    browsers, fake, notebook_host
):
    from selenium.webdriver.common.by import By

    client = client_for(fake)
    created = client.create_session()
    client.terminate_session(created.session_id)
    notebook_host.page = (
        '<!doctype html><meta charset="utf-8"><body>' + created._repr_html_()
    )
    browser = browsers()
    browser.get(notebook_host.url + "/_test/page")
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    status = until(
        lambda: (
            "ended" in (text := browser.find_element(By.ID, "status").text) and text
        ),
        "the ended-session message",
    )
    assert status == "This avatar session has ended."
    assert fake.sdk_calls[0]["token"] == created.token  # the SDK was refused: 401


# --------------------------------------------------------------------------- #
# The README's backends as users deploy them: the Flask snippet as app.py, the
# Django snippet in a fresh `django-admin startproject`, under gunicorn
# --------------------------------------------------------------------------- #


def readme_page(fake: FakeAvaturn) -> str:
    """The README's page, its pinned Web SDK served by the fake."""
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```html\n(.*?)```", readme, re.DOTALL)[1]
    assert av.WEB_SDK_URL in snippet
    fake.sdk_file = SDK_FILE
    return '<!doctype html><meta charset="utf-8"><body>' + snippet.replace(
        av.WEB_SDK_URL, fake.url + "/_test/sdk.js"
    )


BACKENDS = ["readme flask", "readme django", "example flask", "example django"]


def backend(name: str, tmp_path: Path, page: str = "") -> tuple[Path, list[str], str]:
    """A backend as its README tells: (directory, gunicorn's arguments, the page's
    path). The examples with their config. The README's Flask snippet as app.py
    (a route added for its page); its Django snippet in a fresh startproject as
    mysite/avatar.py beside the page, its urls included, av.warm() at the end of
    wsgi.py, migrated. The README's run on gunicorn's defaults."""
    if name.startswith("example"):
        target = "flask_app:app" if "flask" in name else "django_app:application"
        return (
            ROOT,
            ["-c", "examples/gunicorn.conf.py", "--chdir", "examples", target],
            "/",
        )
    readme = (ROOT / "README.md").read_text()
    snippets = readme_sections()["Flask and Django"]
    if name == "readme flask":
        app = next(s for s in snippets if "Flask(__name__)" in s)
        app += f"\napp.add_url_rule('/', 'page', lambda: {page!r})\n"
        (tmp_path / "app.py").write_text(app)
        return tmp_path, ["app:app"], "/"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [bin_dir / "django-admin", "startproject", "mysite"]
    subprocess.run(command, cwd=tmp_path, env=env, check=True)
    project = tmp_path / "mysite"
    package = project / "mysite"
    (package / "avatar.py").write_text(
        next(s for s in snippets if s.startswith("# mysite/avatar.py\n"))
    )
    (package / "avatar.html").write_text(page)
    included = r'`(path\("avatar/", include\("mysite\.avatar"\)\))`'
    include = re.search(included, readme)[1]
    urls = (package / "urls.py").read_text()
    urls = urls.replace("import path", "import include, path")
    (package / "urls.py").write_text(
        urls.replace("urlpatterns = [", f"urlpatterns = [\n    {include},")
    )
    with (package / "wsgi.py").open("a") as wsgi:
        wsgi.write("\nimport avaturn_session as av\n\nav.warm()\n")
    command = [sys.executable, "manage.py", "migrate", "-v", "0"]
    subprocess.run(command, cwd=project, env=env, check=True)
    return project, ["mysite.wsgi"], "/avatar/"


@contextlib.contextmanager
def gunicorn_in(fake: FakeAvaturn, cwd: Path, args: list[str], log: Path) -> Any:
    """`gunicorn -w 4 ARGS` in `cwd`; Avaturn, OpenAI and the Web SDK on the
    fake, its output in `log`. Yields its URL once a worker answers."""
    port = free_port()
    executable = Path(sys.executable).with_name("gunicorn")
    command = [str(executable), "-w", "4", "--bind", f"127.0.0.1:{port}", *args]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fake.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake.url + "/v1",
        "AVATURN_SDK_URL": fake.url + "/_test/sdk.js",
        "FLASK_SECRET_KEY": "web-test-secret",
        "DJANGO_SECRET_KEY": "web-test-secret",
    }
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        until(lambda: server.poll() is not None or answers(url), "gunicorn", 60)
        assert server.poll() is None, f"exit {server.returncode}: {log.read_text()}"
        yield url
    finally:
        server.terminate()
        server.wait(20)


def answers(url: str) -> bool:
    try:
        requests.get(url + "/", timeout=5)
    except requests.RequestException:  # not listening yet, or its workers booting
        return False
    return True


class PageVisitor:
    """What the pages send: Django's CSRF cookie back as a header on their
    fetches, and in the body of their tab-close beacon (Flask ignores both)."""

    def __init__(self, url: str, page: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.get(url + page, timeout=30)  # Django sets its CSRF cookie

    def headers(self, csrf: bool = True) -> dict[str, str]:
        return {"X-CSRFToken": self.http.cookies.get("csrftoken", "")} if csrf else {}

    def start(self, csrf: bool = True) -> Any:
        url = self.url + "/avatar/session"
        return self.http.post(url, json={}, headers=self.headers(csrf), timeout=60)

    def end(self, sid: str) -> Any:
        url = f"{self.url}/avatar/session/{sid}"
        return self.http.delete(url, headers=self.headers(), timeout=60)

    def leave(self, sid: str, csrf: bool = True) -> Any:
        form = {"csrfmiddlewaretoken": self.http.cookies.get("csrftoken", "")}
        url = f"{self.url}/avatar/session/{sid}/end"
        return self.http.post(url, data=form if csrf else {}, timeout=60)


def timed(call: Any, *args: Any) -> tuple[Any, float]:
    began = time.monotonic()
    return call(*args), time.monotonic() - began


def is_json_error(response: Any) -> bool:
    """The app's own JSON answer, not gunicorn's HTML 500 for a killed worker."""
    kind = response.headers.get("Content-Type", "")
    return kind.startswith("application/json") and "error" in response.json()


@pytest.mark.parametrize(
    ("name", "late"),
    [(name, "everything") for name in BACKENDS] + [("readme flask", "create")],
)
def test_backend_answers_within_gunicorns_timeout_and_leaves_nothing_running(
    fake, no_env, tmp_path, name, late
):
    from gunicorn.config import Config

    assert Config().timeout == 30  # the kill the budget keeps clear of
    cwd, args, page = backend(name, tmp_path)
    with gunicorn_in(fake, cwd, args, tmp_path / "gunicorn.log") as url:
        alice, bob = PageVisitor(url, page), PageVisitor(url, page)
        if late == "create":
            # answered 1 s past the 20 s budget, inside CLEANUP_GRACE: the
            # session it names is ended before the visitor hears of the failure
            fake.script("create", Fault("late", delay=21))
            started, took = timed(bob.start)
            assert is_json_error(started) and started.status_code == 502
            assert took < 30
            assert len(fake.created) == 1 and fake.sessions == {}
            return
        sid = alice.start().json()["session_id"]
        # Avaturn and OpenAI answer in 20 s (an end in 40 s): a start would mint,
        # then create too late; both requests give up at the budget
        fake.latency = 20
        fake.script("terminate", Fault("late", delay=20))
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            start = pool.submit(timed, bob.start)
            end = pool.submit(timed, alice.end, sid)
            (started, start_took), (ended, end_took) = start.result(), end.result()
    assert is_json_error(started) and started.status_code == 502
    assert ended.headers["Content-Type"].startswith("application/json")
    assert start_took < 30 and end_took < 30
    assert len(fake.created) == 1 and fake.sessions == {}


def test_readme_django_snippet_serves_a_fresh_startproject_under_gunicorn(
    fake, no_env, tmp_path
):
    cwd, args, page = backend("readme django", tmp_path, "<p>the page</p>")
    with gunicorn_in(fake, cwd, args, tmp_path / "gunicorn.log") as url:
        # av.warm() at the end of wsgi.py: each worker opened its Avaturn and
        # OpenAI connections before its first visitor, and sent nothing
        until(lambda: fake.connections >= 8, "4 workers warmed by wsgi.py")
        assert not fake.attempts
        alice, mallory = PageVisitor(url, page), PageVisitor(url, page)
        assert alice.http.cookies.get("csrftoken")  # the page set it
        assert alice.start(csrf=False).status_code == 403  # CSRF stays on
        assert not fake.attempts
        started = alice.start().json()
        sid = started["session_id"]
        assert started["sessionToken"] == fake.sessions[sid]["token"]
        assert mallory.end(sid).status_code == 404
        assert mallory.leave(sid).status_code == 404
        assert alice.end(sid).json() == {"ended": True} and fake.sessions == {}
        sid = alice.start().json()["session_id"]
        assert alice.leave(sid, csrf=False).status_code == 403  # a beacon needs it too
        assert alice.leave(sid).json() == {"ended": True} and fake.sessions == {}
        fake.script("create", Fault("raw", status=401, body=b'{"detail": "bad key"}'))
        failed = alice.start()
        assert failed.status_code == 502 and is_json_error(failed)
        assert "bad key" not in failed.text
        assert "401 Unauthorized" in (tmp_path / "gunicorn.log").read_text()
        assert len(fake.created) == 2 and fake.sessions == {}


# --------------------------------------------------------------------------- #
# The pages in a real browser: one start in flight, a message that reads well
# --------------------------------------------------------------------------- #


@pytest.fixture(params=BACKENDS)
def page_url(request, fake, no_env, tmp_path):
    """A page and its backend under gunicorn; Avaturn, OpenAI and the Web SDK on
    the fake."""
    cwd, args, page = backend(request.param, tmp_path, readme_page(fake))
    with gunicorn_in(fake, cwd, args, tmp_path / "gunicorn.log") as url:
        yield url + page


def test_browser_page_starts_one_session_however_fast_start_is_clicked(
    browsers, fake, page_url
):
    from selenium.webdriver.common.by import By

    alice = browsers()
    alice.get(page_url)
    alice.execute_script(
        'const start = document.getElementById("start"); start.click(); start.click();'
    )
    first = live_session(fake)
    # The SDK called with its token: that start is answered, and a second one,
    # sent with the first, would have reached the fake long before.
    until(lambda: fake.sdk_calls, "the SDK's first call")
    assert len(fake.created) == 1 and fake.attempts["openai"] == 1
    until(lambda: alice.find_element(By.ID, "stop").is_enabled(), "Stop")
    alice.find_element(By.ID, "stop").click()
    until(lambda: not fake.sessions, "Stop to end the session")
    # the tab goes away: its beacon ends the session (Django: CSRF in its body)
    until(lambda: alice.find_element(By.ID, "start").is_enabled(), "Start")
    alice.find_element(By.ID, "start").click()
    live_session(fake, {first})
    page_tab = alice.current_window_handle
    alice.switch_to.new_window("tab")
    alice.switch_to.window(page_tab)
    alice.close()
    until(lambda: not fake.sessions, "closing the tab to end the session")
    assert len(fake.created) == 2


def test_browser_page_says_why_a_start_failed_in_one_clean_sentence(
    browsers, fake, page_url
):
    from selenium.webdriver.common.by import By

    fake.script("create", Fault("raw", status=401, body=b'{"detail": "bad key"}'))
    alice = browsers()
    alice.get(page_url)
    alice.find_element(By.ID, "start").click()
    status = until(
        lambda: (
            "unavailable" in (text := alice.find_element(By.ID, "status").text) and text
        ),
        "the failure message",
    )
    assert status.startswith("Could not start the avatar: The avatar is unavailable")
    assert not re.search(r"[.,:;!?]\s*[.,:;!?]", status), status
    assert "bad key" not in status
    assert alice.find_element(By.ID, "start").is_enabled()  # to try again
    assert fake.sessions == {}


# --------------------------------------------------------------------------- #
# Deployments: gunicorn's worker classes, uWSGI's two modes, celery
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def served(command: list[str], log: Path) -> Any:
    """A server from the checkout with the test's environment (its fakes' keys,
    base URLs and CA bundle); its output in `log`. On exit it is stopped, and
    none of its processes may be left running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLASK_SECRET_KEY": "deploy-test"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield server
    except BaseException:
        print(log.read_text()[-5000:])  # pytest shows it with the failure
        raise
    finally:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        workers = children.read_text().split() if children.exists() else []
        server.send_signal(signal.SIGINT)  # all of them stop at once on SIGINT
        server.wait(30)
        for pid in workers:  # gone, not merely orphaned
            gone = Path(f"/proc/{pid}")
            until(lambda gone=gone: not gone.exists(), f"worker {pid} to exit")


def gunicorn_command(worker_class: str, workers: int) -> tuple[list[str], str]:
    """The examples' config, as the README runs it, with any worker class; its URL."""
    bind = f"127.0.0.1:{free_port()}"
    command = [str(Path(sys.executable).with_name("gunicorn")), "--bind", bind]
    command += [
        "-k",
        worker_class,
        "-w",
        str(workers),
        "-c",
        "examples/gunicorn.conf.py",
    ]
    return command + ["--chdir", "examples", "flask_app:app"], f"http://{bind}"


def visit(url: str, starts: int) -> list[Any]:
    """One visitor (one cookie) starting and ending `starts` sessions in turn;
    a new connection for each request, as uWSGI's --http closes each one."""
    ended = []
    for _ in range(starts):
        started = requests.post(url + "/avatar/session", json={}, timeout=60)
        sid = started.json()["session_id"]
        end = requests.delete(
            f"{url}/avatar/session/{sid}", cookies=started.cookies, timeout=60
        )
        ended.append(end.json())
    return ended


@pytest.mark.parametrize(
    ("worker_class", "hosts", "visitors", "starts"),
    [
        ("gevent", "three_fakes", 20, 10),
        ("gevent", "tls_fakes", 20, 10),
        ("sync", "tls_fakes", 4, 5),
        ("gthread", "tls_fakes", 4, 5),
    ],
)
def test_gunicorn_config_serves_concurrent_visitors_with_every_worker_class(
    request, tmp_path, no_env, worker_class, hosts, visitors, starts
):
    fakes = request.getfixturevalue(hosts)
    command, url = gunicorn_command(worker_class, workers=2)
    with served(command, tmp_path / "gunicorn.log"):
        # each worker opened one connection to each host whose key is set,
        # and sent nothing
        warmed = {"avaturn": 2, "openai": 2, "cartesia": 2}
        until(lambda: connections(fakes) == warmed, "2 warmed workers")
        assert not any(fake.attempts for fake in fakes.values())
        # the first visitor's calls go over the warmed connections
        assert visit(url, 1) == [{"terminated": True}]
        assert connections(fakes) == warmed
        with concurrent.futures.ThreadPoolExecutor(visitors) as pool:
            ended = [
                end
                for ends in pool.map(visit, [url] * visitors, [starts] * visitors)
                for end in ends
            ]
    assert ended == [{"terminated": True}] * (visitors * starts)
    assert len(fakes["avaturn"].created) == visitors * starts + 1
    assert fakes["avaturn"].sessions == {}
    log = (tmp_path / "gunicorn.log").read_text()
    # gevent warns when ssl-using modules were imported before it patched
    errors = ("Traceback", "MonkeyPatchWarning", "RecursionError", "OverflowError")
    assert [error for error in errors if error in log] == [], log[-3000:]


def test_gunicorn_gevent_worker_serves_a_page_while_a_start_waits(
    tmp_path, three_fakes, no_env
):
    """The warmed sockets are gevent's: a start waiting on one blocks no one else."""
    command, url = gunicorn_command("gevent", workers=1)
    with served(command, tmp_path / "gunicorn.log"):
        until(lambda: three_fakes["openai"].connections == 1, "a warmed worker")
        three_fakes["openai"].script("openai", Fault("late", delay=6))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(visit, url, 1)
            until(lambda: three_fakes["openai"].attempts["openai"], "the slow mint")
            start = time.monotonic()
            page = requests.get(url + "/", timeout=30)
            waited = time.monotonic() - start
            assert slow.result() == [{"terminated": True}]
    assert page.status_code == 200 and waited < 3
    assert three_fakes["openai"].connections == 1  # the mint went over the warm one
    assert three_fakes["avaturn"].sessions == {}


# Where the README puts av.warm() under uWSGI, in a module of its own (uwsgidecorators
# exists only under uWSGI): its default imports the app in the master, then forks;
# --lazy-apps imports it in each worker, where postfork hooks never run.
UWSGI_POSTFORK = """
import uwsgidecorators

import avaturn_session as av
from flask_app import app

uwsgidecorators.postfork(av.warm)
"""
UWSGI_AT_IMPORT = """
import avaturn_session as av
from flask_app import app

av.warm()
"""
# The test's own addition: which worker answered.
WORKER_HEADER = """
@app.after_request
def worker(response):
    response.headers["X-Worker"] = str(__import__("os").getpid())
    return response
"""


@pytest.mark.parametrize(
    ("mode", "module", "warmed"),
    [
        ([], UWSGI_POSTFORK, 4),  # each of the 2 workers: Avaturn and OpenAI
        (["--lazy-apps"], UWSGI_AT_IMPORT, 4),
        ([], UWSGI_AT_IMPORT, 2),  # in the master: wasted, and never used by a worker
    ],
    ids=["postfork", "lazy-apps", "warmed-in-master"],
)
def test_uwsgi_workers_each_use_their_own_connections(
    fake, tmp_path, monkeypatch, no_env, mode, module, warmed
):
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    (tmp_path / "served_app.py").write_text(module + WORKER_HEADER)
    executable = Path(sys.executable).with_name("uwsgi")
    assert executable.exists(), "uwsgi is in the test extra"
    url = f"http://127.0.0.1:{free_port()}"
    command = [str(executable), "--http", url[7:]]
    command += ["--master", "--processes", "2", "--module", "served_app:app"]
    command += ["--chdir", "examples", "--pythonpath", str(tmp_path), *mode]
    with served(command, tmp_path / "uwsgi.log"):
        until(lambda: fake.connections == warmed, "warmed connections")
        assert not fake.attempts
        owners: dict[int, set[str]] = {}  # client port at the fake: workers using it

        def request(method: str, path: str, **kwargs: Any) -> Any:
            """One request; the fake's connections it used, to the worker that answered."""
            seen = len(fake.peers)
            answer = requests.request(method, url + path, timeout=60, **kwargs)
            for _, port in fake.peers[seen:]:
                owners.setdefault(port, set()).add(answer.headers["X-Worker"])
            return answer

        workers: set[str] = set()
        while len(workers) < 2 and len(fake.created) < 40:
            started = request("POST", "/avatar/session", json={})
            sid = started.json()["session_id"]
            ended = request("DELETE", f"/avatar/session/{sid}", cookies=started.cookies)
            assert ended.json() == {"terminated": True}
            workers |= {started.headers["X-Worker"], ended.headers["X-Worker"]}
    assert len(workers) == 2 and fake.sessions == {}
    assert [port for port, users in owners.items() if len(users) > 1] == []
    if warmed == 2:  # the master's connections carried nothing
        assert len(owners) == fake.connections - 2


def celery_backend() -> Any:
    """celery's result backend with its defaults (the json serializer), no broker."""
    celery = pytest.importorskip("celery")
    backend = celery.Celery(backend="cache+memory://").backend
    assert backend.serializer == "json"
    return backend


@pytest.mark.parametrize("error", ERROR_SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_round_trip_through_celerys_json_serializer(error):
    backend = celery_backend()
    stored = backend.encode(backend.prepare_exception(error))  # what a worker stores
    clone = backend.exception_to_python(backend.decode(stored))  # what .get() raises
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_errors_the_library_raises_fit_celerys_json_serializer(fake):
    """Real errors, with every field the library fills in, survive it too."""
    client = client_for(fake, max_retries=0)
    fake.script("create", Fault("status", status=429, retry_after="90"))
    fake.script("create", Fault("html"), Fault("empty"), Fault("late", delay=2))
    fake.script("say", Fault("echo"))
    fake.script("openai", Fault("status", status=500))
    calls = [
        lambda: client.create_session(),  # 429, Retry-After
        lambda: client.create_session(),  # 502, an HTML page
        lambda: client.create_session(),  # 200 without a body
        lambda: client.create_session(deadline=0.3),  # the deadline
        lambda: client.create_session({"type": "bogus"}),  # 422, FastAPI's detail
        lambda: client.say("sess_gone", "hi"),  # 500 echoing secrets
        lambda: client.say("sess_gone", "hi"),  # 404
        lambda: av.AvaturnClient(
            KEY, base_url=closed_port_url(), max_retries=0
        ).terminate_session("s1"),  # refused
        lambda: client.create_session(user_absent_timeout=-5),  # bad input
        lambda: av.mint_openai_client_secret(api_key="sk-x", base_url=fake.url + "/v1"),
    ]
    backend = celery_backend()
    for call in calls:
        with pytest.raises(av.AvaturnError) as info:
            call()
        clone = backend.exception_to_python(
            backend.decode(backend.encode(backend.prepare_exception(info.value)))
        )
        assert (type(clone), str(clone)) == (type(info.value), str(info.value))
        assert vars(clone) == vars(info.value)


def test_error_read_where_avaturn_session_is_not_imported_keeps_message_and_fields(
    monkeypatch,
):
    """celery then makes an Exception subclass of the same name: no
    `except av.NotFoundError` catches it; args are (message, fields)."""
    backend = celery_backend()
    error = av.NotFoundError("404 Not Found (request req_1): gone", status_code=404)
    stored = backend.encode(backend.prepare_exception(error))
    monkeypatch.delitem(sys.modules, "avaturn_session")
    clone = backend.exception_to_python(backend.decode(stored))
    assert type(clone).__name__ == "NotFoundError"
    assert type(clone).__mro__[1:] == (Exception, BaseException, object)
    assert clone.args == ("404 Not Found (request req_1): gone", {"status_code": 404})


CELERY_TASKS = """
import os

import celery

import avaturn_session as av

app = celery.Celery("tasks", broker=os.environ["BROKER"], backend=os.environ["BROKER"])


@app.task
def say(session_id, text):
    return av.say(session_id, text)
"""


def test_error_raised_in_a_celery_task_arrives_typed(fake, tmp_path, monkeypatch):
    """A prefork worker on a real redis, celery's defaults: the caller's .get()
    raises the library's class with its fields."""
    redis = shutil.which("redis-server")
    if redis is None:  # .ci/run installs it
        reason = "the celery test needs redis-server: apt-get install -y redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    monkeypatch.setenv("AVATURN_API_KEY", KEY)
    monkeypatch.setenv("AVATURN_BASE_URL", fake.url)
    monkeypatch.setenv("BROKER", f"redis+socket://{tmp_path}/redis.sock")
    (tmp_path / "tasks.py").write_text(CELERY_TASKS)
    spec = importlib.util.spec_from_file_location("tasks", tmp_path / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)  # the caller's side, as "tasks"
    spec.loader.exec_module(tasks)
    store = [redis, "--port", "0", "--unixsocket", f"{tmp_path}/redis.sock"]
    store += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    worker = [str(Path(sys.executable).with_name("celery")), "--workdir", str(tmp_path)]
    worker += ["-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "2"]
    with (
        served(store, tmp_path / "redis.log"),
        served(worker, tmp_path / "celery.log"),
    ):
        result = tasks.say.delay("sess_unknown", "hello")
        with pytest.raises(av.NotFoundError) as info:
            result.get(timeout=60)
    assert info.value.status_code == 404
    assert str(info.value).startswith("404 Not Found")
    assert fake.attempts["say"] == 1


# --------------------------------------------------------------------------- #
# The notebook in a real kernel: Run All with a reader, headless, failing,
# interrupted; whichever way it stops, no session is left running
# --------------------------------------------------------------------------- #

NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


@pytest.fixture
def notebook_env(fake, monkeypatch, no_env):
    """The kernel's environment: the keys, and every host on the fake."""
    pytest.importorskip("nbclient")
    for name, value in {
        "AVATURN_API_KEY": KEY,
        "AVATURN_BASE_URL": fake.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": fake.url + "/v1",
        "AVATURN_SDK_URL": fake.url + "/_test/sdk.js",
        "PYTHONPATH": str(ROOT),
    }.items():
        monkeypatch.setenv(name, value)


def run_all(reader: Any) -> list[dict[str, Any]]:
    """*Run All* as Jupyter's browser front end does it: each code cell in
    order in a fresh kernel, stdin allowed, stopping at the first error.
    `reader(km, kc)` is whoever sits at the input box. Returns the IOPub
    messages and the execute replies."""
    import jupyter_client
    import nbformat

    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    km, kc = jupyter_client.manager.start_new_kernel(
        kernel_name="python3", startup_timeout=180
    )
    messages: list[dict[str, Any]] = []
    try:
        for cell in (c for c in cells if c.cell_type == "code"):
            reply = kc.execute_interactive(
                cell.source,
                allow_stdin=True,
                timeout=180,
                output_hook=messages.append,
                stdin_hook=lambda request: reader(km, kc),
            )
            messages.append(reply)
            if reply["content"]["status"] != "ok":
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return messages


@pytest.mark.parametrize(
    ("reader", "ending"),
    [
        ("presses Enter", "ok"),
        ("interrupts the kernel", "KeyboardInterrupt"),
    ],
)
def test_notebook_run_all_shows_live_avatars_until_the_reader_is_done(
    fake, notebook_env, reader, ending
):
    at_the_box: list[tuple[int, list[str]]] = []

    def sit_at_the_input_box(km: Any, kc: Any) -> None:
        at_the_box.append((len(fake.sessions), [t for _, t in fake.spoken]))
        if reader == "presses Enter":
            kc.input("")
        else:
            km.interrupt_kernel()

    messages = run_all(sit_at_the_input_box)
    # While Run All waits, both avatars are live and the echo one has spoken.
    assert at_the_box == [(2, ["Hello from the notebook!"])]
    last = messages[-1]["content"]
    assert (last.get("ename") or last["status"]) == ending
    assert fake.sessions == {}, "the notebook left a session running"
    assert len(fake.created) == 2
    shown = [
        m["content"]["data"] for m in messages if m.get("msg_type") == "display_data"
    ]
    voice = next(
        r["token"]
        for r in fake.created.values()
        if r["body"]["conversation_engine"]["type"] == "openai-realtime"
    )
    page = html.unescape(shown[0]["text/html"])
    assert shown[0]["text/html"].startswith("<iframe srcdoc=")
    assert 'allow="microphone; autoplay"' in shown[0]["text/html"]
    assert '"audio": true' in page  # the user is heard
    assert voice in page  # the browser needs it
    assert voice not in shown[0]["text/plain"]  # repr() stays token-free
    assert len(shown) == 2  # the echo avatar too
    everything = json.dumps(messages, default=str)
    assert KEY not in everything and OPENAI_KEY not in everything


def test_notebook_run_headless_by_nbconvert_ends_both_sessions(fake, notebook_env):
    import nbformat

    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in stored.cells), "saved with outputs"
    assert all(c.get("execution_count") is None for c in stored.cells)
    run = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute"]
        + ["--stdout", str(NOTEBOOK)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    executed = nbformat.reads(run.stdout, as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert [o["output_type"] for o in outputs] == ["display_data"] * 2
    assert [t for _, t in fake.spoken] == ["Hello from the notebook!"]
    assert fake.sessions == {}, "the notebook left a session running"
    assert len(fake.created) == 2


@pytest.mark.parametrize(
    ("route", "faults", "created"),
    [
        ("say", [Fault("status", status=400)], 2),
        ("create", [Fault("late", delay=0), Fault("status", status=400)], 1),
    ],
)
def test_notebook_cell_failing_after_a_create_ends_what_it_created(
    fake, notebook_env, route, faults, created
):
    import nbclient
    import nbformat

    fake.script(route, *faults)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=180, startup_timeout=180, kernel_name="python3"
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="BadRequest"):
        client.execute()
    assert len(fake.created) == created
    assert fake.sessions == {}, "the failing cell left a session running"
