"""avaturn-session: run the whole life of an Avaturn.Live avatar session, blocking.

Mint the conversation engine's short-lived credential, create the session, hand
its token to the browser's Web SDK, push text for the avatar to say, terminate.

    import avaturn_session as av  # keys: AVATURN_API_KEY, OPENAI_API_KEY

    secret = av.mint_openai_client_secret({"model": "gpt-realtime"})
    engine = av.openai_realtime_engine(secret)
    with av.deadline(20), av.session(engine, user_absent_timeout=30) as s:
        options = s.web_sdk_options()  # {"sessionToken": ..., "apiHost": ...}
        ...  # hand `options` to the browser's `new AvaturnHead(el, options)`
    # leaving the block ended the session, whatever happened inside; every
    # call in the deadline block ended within its 20 s

    with av.session(av.text_echo_engine("voice_id")) as s:
        av.say(s.session_id, "Hello!")  # text-echo sessions speak pushed text
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import functools
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypedDict, TypeVar, cast

import requests
import requests.adapters
import requests.structures
import requests.utils
import urllib3
import urllib3.exceptions

if TYPE_CHECKING:  # only the type checker needs these (Self, Unpack: 3.11+)
    import argparse
    from typing import Self

    from typing_extensions import Unpack

if not hasattr(urllib3.HTTPResponse, "read1"):  # a copied file: setup.cfg requires
    raise ImportError("avaturn_session needs urllib3>=2.2: pip install 'urllib3>=2.2'")

# fmt: off
__all__ = [
    "CLEANUP_GRACE", "DEFAULT_BASE_URL", "DEFAULT_DEADLINE", "DEFAULT_MAX_RETRIES",
    "DEFAULT_POOL_MAXSIZE", "DEFAULT_TIMEOUT", "INITIAL_RETRY_DELAY",
    "KEEPALIVE_EXPIRY", "MAX_ERROR_BODY_BYTES", "MAX_RESPONSE_BYTES", "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY", "READY_MIN_LIFE", "WEB_SDK_URL", "APIConnectionError",
    "APIResponseError", "APIStatusError", "APITimeoutError", "AuthenticationError",
    "AvaturnClient", "AvaturnError", "AvaturnSession", "BadRequestError",
    "ConfigurationError", "CredentialError", "GoneError", "InternalServerError",
    "NotFoundError", "PermissionDeniedError", "RateLimitError",
    "UnprocessableEntityError", "cartesia_engine", "close_shared_clients",
    "create_session", "deadline", "external_engine", "main",
    "mint_cartesia_access_token", "mint_openai_client_secret", "openai_realtime_engine",
    "say", "session", "terminate_session", "text_echo_engine", "warm",
]
# fmt: on

__version__ = "0.4.0"

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

#: Production Avaturn.Live API; also the Web SDK's default ``apiHost``.
DEFAULT_BASE_URL = "https://api.avaturn.live"

#: The browser Web SDK, pinned: the one place its version is set (a
#: self-contained ES module; ``sdk_url=`` or ``AVATURN_SDK_URL`` serve another).
WEB_SDK_URL = "https://cdn.jsdelivr.net/npm/@avaturn-live/web-sdk@0.3.7/dist/main.js"

#: Seconds (connect, read): connect bounds name resolution, each address's
#: connect and the TLS handshake; read bounds each write and each read.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)

#: Total seconds one public call may take, every attempt and wait included;
#: nothing is sent once it has passed. ``deadline()`` bounds several calls.
DEFAULT_DEADLINE = 60.0

#: Seconds past a create's deadline to learn and end a session the server
#: made (its answer is read for half, the DELETE gets the rest); also the
#: least that ending a ``session()`` block gets, even past a deadline.
CLEANUP_GRACE = 5.0

#: Extra attempts after the first, for the failures that are safe to repeat.
DEFAULT_MAX_RETRIES = 2

#: Backoff before the first retry, in seconds; it doubles for each further one.
INITIAL_RETRY_DELAY = 0.5

#: Upper bound of the exponential backoff, in seconds.
MAX_RETRY_DELAY = 8.0

#: A longer ``Retry-After`` (seconds) is not waited for: the error is raised.
MAX_RETRY_AFTER = 60.0

#: Idle connections kept per host, for as many threads at once.
DEFAULT_POOL_MAXSIZE = 32

#: Seconds a pooled connection may idle and still be reused (httpx's default),
#: or a second less than a shorter ``Keep-Alive: timeout=`` of the server's: no
#: request is written into a connection the server is closing as idle.
KEEPALIVE_EXPIRY = 5.0

#: Largest 2xx answer read, in bytes (a longer one is an ``APIResponseError``).
MAX_RESPONSE_BYTES = 1024 * 1024

#: Largest error (4xx/5xx) body read, in bytes; the rest is dropped.
MAX_ERROR_BODY_BYTES = 64 * 1024

#: A credential minted ahead (``ready=True``) is handed out only while at
#: least this share of its lifetime is left.
READY_MIN_LIFE = 0.5

# Random part of each backoff delay: the delay is scaled by 1 - JITTER * U[0, 1).
_JITTER = 0.25

# Largest integer option where the API sets no bound; longest seconds (a day).
_MAX_INT = 2**31 - 1
_MAX_SECONDS = 24 * 3600.0

# Bytes asked for per read of an answer's body.
_READ_CHUNK = 16 * 1024

# Configurations kept ready per process (more mint inline); its thread's name.
_MAX_READY = 8
_READY_THREAD = "avaturn-session-ready"

# Create-session limits from the API reference: (least, most) seconds.
_LIMITS = {"user_absent_timeout": (10, None), "max_duration": (60, 86400)}
_BACKGROUNDS = ("default", "transparent")

# Minting providers: the key's variable, the base URL's variable and default,
# the path, the credential's field, its lifetime in seconds (least, most).
_MINTERS = {
    "openai": (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "https://api.openai.com/v1",
        "/realtime/client_secrets",
        "value",
        (10, 7200),
    ),
    "cartesia": (
        "CARTESIA_API_KEY",
        "CARTESIA_BASE_URL",
        "https://api.cartesia.ai",
        "/access-token",
        "token",
        (1, 3600),
    ),
}
_OPENAI_DEFAULT_SESSION: dict[str, Any] = {"type": "realtime", "model": "gpt-realtime"}
# Headers sent when minting: Cartesia's API version; OpenAI's organization and
# project, when their variables (read by the openai SDK too) are set.
_CARTESIA_VERSION = "2025-04-16"
_OPENAI_HEADERS = (
    ("OpenAI-Organization", "OPENAI_ORG_ID"),
    ("OpenAI-Project", "OPENAI_PROJECT_ID"),
)

_PATH_SESSIONS = "/api/v1/sessions"
_USER_AGENT = f"avaturn-session/{__version__}"

# Deepest JSON sent or redacted; longest detail quoted in a message; secrets
# remembered, to be scrubbed from any later error.
_MAX_JSON_DEPTH = 32
_MAX_DETAIL_CHARS = 500
_REMEMBERED_SECRETS = 256

# Status phrases, as CPython before 3.13 words them: the same text everywhere.
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus} | {
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    416: "Requested Range Not Satisfiable",
    422: "Unprocessable Entity",
}

_log = logging.getLogger("avaturn_session")

# --------------------------------------------------------------------------- #
# Exceptions
# --------------------------------------------------------------------------- #


class AvaturnError(Exception):
    """Root of every error this module raises: ``str()`` is the message, the
    fields are attributes, and ``args`` is (message, fields), so pickle and
    celery's JSON serializer both rebuild the same class, message and fields."""

    #: A session the failed call created that may still be running, if known.
    session_id: str | None = None

    def __init__(
        self, message: str = "", fields: Mapping[str, Any] | None = None, /, **more: Any
    ) -> None:
        fields = {**(fields or {}), **more}
        super().__init__(message, fields)
        self.__dict__.update(fields)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(AvaturnError, ValueError):
    """Bad input or setup, caught before any request was sent."""


class CredentialError(AvaturnError):
    """Minting the conversation engine's credential failed (``.provider``)."""

    provider: str = ""


class APIConnectionError(AvaturnError):
    """No HTTP answer arrived: refused, reset, DNS failure, a cut-off answer.
    ``.request_sent``: a byte of it was written to a socket (or it went through
    a caller's ``http_session`` or an HTTPS or SOCKS proxy: those count nothing)."""

    method: str = ""
    path: str = ""
    request_sent: bool = True


class APITimeoutError(APIConnectionError):
    """A step's timeout or the call's deadline passed."""


class APIResponseError(AvaturnError):
    """A 2xx or 3xx answer that cannot be used: not JSON, a field missing, a redirect."""

    status_code: int = 0
    method: str = ""
    path: str = ""


class APIStatusError(AvaturnError):
    """A 4xx or 5xx answer: ``422 Unprocessable Entity (request req_1): loc: msg``.
    ``.retry_after``: seconds the server asked to wait; ``.errors``: FastAPI's
    validation items."""

    status_code: int = 0
    detail: Any = None
    request_id: str | None = None
    method: str = ""
    path: str = ""
    body: Any = None
    retry_after: float | None = None
    errors: list[Any] = []  # noqa: RUF012 - replaced, never changed


class BadRequestError(APIStatusError):
    """400: the server refused the payload (unknown voice, invalid render model)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such session or endpoint."""


class GoneError(APIStatusError):
    """410: the resource existed once (e.g. a retired avatar_id)."""


class UnprocessableEntityError(APIStatusError):
    """422: validation failed; ``.errors`` holds FastAPI's detail list."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``.retry_after`` says how long to wait, if known."""


class InternalServerError(APIStatusError):
    """5xx: the server or a gateway in front of it failed."""


# --------------------------------------------------------------------------- #
# Data classes
# --------------------------------------------------------------------------- #


class AvaturnSession(
    NamedTuple(
        "AvaturnSession", [("session_id", str), ("token", str), ("api_host", str)]
    )
):
    """A created session: its id, the browser's token and the API host it lives
    on. Immutable, compared by value; the token shows in no repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AvaturnSession(session_id={self[0]!r}, api_host={self[2]!r})"

    def web_sdk_options(self) -> dict[str, str]:
        """Options for ``new AvaturnHead(element, options)`` in the Web SDK."""
        return {"sessionToken": _Secret(self.token), "apiHost": self.api_host}

    def web_sdk_html(
        self,
        *,
        sdk_url: str | None = None,
        audio: bool = False,
        width: str = "100%",
        height: str = "480px",
    ) -> str:
        """A complete HTML page showing this session's avatar with the Web SDK.

        ``sdk_url`` defaults to ``AVATURN_SDK_URL``, then ``WEB_SDK_URL``;
        ``audio=True`` sends the visitor's microphone; ``width`` and ``height``
        are CSS lengths. The page says when the SDK cannot load or connect or
        the session has ended; ending the session stays the backend's job.
        """
        sdk_url = sdk_url or os.environ.get("AVATURN_SDK_URL") or WEB_SDK_URL
        if _split_url(sdk_url, "sdk_url").scheme not in ("https", "http"):
            raise ConfigurationError("sdk_url must be an http(s) URL")
        if not isinstance(audio, bool):
            raise ConfigurationError("audio must be True or False")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, str) or not _CSS_LENGTH.fullmatch(value):
                raise ConfigurationError(f"{name} must be a CSS length like '480px'")
        config = {"sdkUrl": sdk_url, "audio": audio, **self.web_sdk_options()}
        # JSON safe inside a <script>: no </script>, <!-- or line separator.
        script = json.dumps(config).translate(_SCRIPT_ESCAPES)
        return _WEB_SDK_PAGE.format(width=width, height=height, config=script)

    def _repr_html_(self) -> str:
        """The live avatar in a Jupyter cell: ``web_sdk_html`` in an iframe, the
        microphone on (a voice engine hears its user; text-echo ignores it)."""
        import html

        page = html.escape(self.web_sdk_html(audio=True, height="440px"), quote=True)
        return (
            f'<iframe srcdoc="{page}" allow="microphone; autoplay" '
            'style="width: 100%; height: 480px; border: 0"></iframe>'
        )


# Characters escaped in the page's JSON, and a CSS length for its avatar.
_SCRIPT_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
_CSS_LENGTH = re.compile(r"\d{1,5}(\.\d{1,3})?(px|%|em|rem|vh|vw)")

# The page of ``AvaturnSession.web_sdk_html``; ``config`` is escaped JSON.
_WEB_SDK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Avaturn avatar</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  html, body {{ margin: 0; font: 14px system-ui, sans-serif; }}
  #avatar {{ width: {width}; height: {height}; background: #111; }}
  #status {{ margin: 6px 0; color: #555; }} .error {{ color: #b00020; }}
</style></head>
<body><div id="avatar"></div>
<p id="status" role="status">Loading the Avaturn Web SDK...</p>
<script type="module">
  const config = {config};
  const status = document.getElementById("status");
  const show = (text, error = false) => {{
    status.textContent = text;
    status.className = error ? "error" : "";
  }};
  let head = null;
  try {{
    const {{ AvaturnHead }} = await import(config.sdkUrl);
    head = new AvaturnHead(document.getElementById("avatar"), {{
      sessionToken: config.sessionToken, apiHost: config.apiHost, audioSource: config.audio,
    }});
    show("Connecting to the avatar...");
    await head.init();
    show("Connected.");
  }} catch (error) {{
    const reason = String(error && error.message || error);
    show(head === null
      ? "Could not load the Avaturn Web SDK from " + config.sdkUrl + "."
      : /status code 40[134]|status code 410/.test(reason)  // the token is no longer valid
      ? "This avatar session has ended."
      : "Could not connect to the avatar: " + reason, true);
  }}
  window.addEventListener("pagehide", () => head && head.dispose());
</script></body></html>
"""


class _CreateOptions(TypedDict, total=False):
    """``create_session``'s options, for the functions that forward them."""

    avatar_id: str | None
    background: str | None
    render_model: str | None
    user_absent_timeout: int | None
    max_duration: int | None
    extra: Mapping[str, Any] | None
    timeout: float | tuple[float, float] | None
    deadline: float | None


# --------------------------------------------------------------------------- #
# Engine helpers (their credentials show as *** in any repr)
# --------------------------------------------------------------------------- #


def openai_realtime_engine(client_secret: str) -> dict[str, Any]:
    """Engine config for an OpenAI Realtime session bound to a client secret (``ek_...``)."""
    return _check_engine({"type": "openai-realtime", "client_secret": client_secret})


def cartesia_engine(access_token: str, agent_id: str) -> dict[str, Any]:
    """Engine config for a Cartesia Line agent, with a freshly minted access token."""
    return _check_engine(
        {"type": "cartesia", "access_token": access_token, "agent_id": agent_id}
    )


def text_echo_engine(voice_id: str) -> dict[str, Any]:
    """Engine config for the legacy text-echo type: an ElevenLabs voice says pushed text."""
    tts = {"engine": "elevenlabs", "voice_id": voice_id}
    return _check_engine({"type": "text-echo", "tts": tts})


def external_engine(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    user_sample_rate: int | None = None,
) -> dict[str, Any]:
    """Engine config for your own WebSocket engine that Avaturn connects to.

    ``url`` must be ``ws://`` or ``wss://``; ``headers`` (a str to str mapping)
    are sent by Avaturn when it connects and are treated as secrets;
    ``user_sample_rate`` is the user's audio rate in Hz.
    """
    engine = _hide({"type": "external", "url": url, "headers": headers})
    headers = engine["headers"]  # the masked copy: no frame holds a plain value
    if headers is None:
        del engine["headers"]
    if user_sample_rate is not None:
        engine["audio"] = {"user": {"sample_rate": user_sample_rate}}
    return _check_engine(engine)


# --------------------------------------------------------------------------- #
# Credential minting
# --------------------------------------------------------------------------- #


def mint_openai_client_secret(
    session: Mapping[str, Any] | None = None,
    *,
    expires_in: int = 600,
    api_key: str | None = None,
    base_url: str | None = None,
    ready: bool = False,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
    openai_client: Any = None,
) -> str:
    """Mint a short-lived OpenAI Realtime client secret (``ek_...``) for one session.

    ``session``: the Realtime session config (model, instructions, voice, tools;
    default model ``gpt-realtime``); ``expires_in``: seconds, 10..7200. Key from
    ``api_key`` or ``OPENAI_API_KEY``; host from ``base_url``, ``OPENAI_BASE_URL``
    or ``https://api.openai.com/v1``. One POST, never repeated, within
    ``timeout`` and ``deadline`` (``DEFAULT_TIMEOUT``, ``DEFAULT_DEADLINE``, and
    any ``deadline()`` block). ``ready=True``: one minted ahead for this exact
    configuration when one is ready (``READY_MIN_LIFE``); the next is minted
    in the background. ``openai_client`` (deprecated) mints through that SDK
    client, bounded by one timeout only. Raises ``ConfigurationError`` or
    ``CredentialError`` (``provider="openai"``).
    """
    session = _hide(session)  # masked first: no frame holds its credentials plain
    if session is not None and not isinstance(session, dict):
        raise ConfigurationError("session must be a mapping")
    body = {
        "expires_after": {"anchor": "created_at", "seconds": expires_in},
        "session": {"type": "realtime", **(session or _OPENAI_DEFAULT_SESSION)},
    }
    options = (expires_in, api_key, base_url, ready, timeout, deadline)
    if openai_client is not None:
        return _mint_with_sdk(openai_client, body, *options)
    return _mint("openai", body, *options)


def mint_cartesia_access_token(
    *,
    api_key: str | None = None,
    expires_in: int = 300,
    base_url: str | None = None,
    ready: bool = False,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> str:
    """Mint a short-lived Cartesia access token with the agent grant.

    Key from ``api_key`` or ``CARTESIA_API_KEY``; host from ``base_url`` or
    ``CARTESIA_BASE_URL``. ``expires_in``: seconds, 1..3600. One attempt;
    ``ready``, ``timeout`` and ``deadline`` as in ``mint_openai_client_secret``.
    Raises ``ConfigurationError`` or ``CredentialError`` (``provider="cartesia"``).
    """
    body = {"grants": {"agent": True}, "expires_in": expires_in}
    options = (expires_in, api_key, base_url, ready, timeout, deadline)
    return _mint("cartesia", body, *options)


def _mint(provider: str, body: dict[str, Any], *options: Any) -> str:
    """A credential: one minted ahead (``ready``) if there is one, else minted now."""
    lifetime, api_key, base_url, ready, timeout, deadline = options
    _check_int(lifetime, "expires_in", *_MINTERS[provider][5])
    if not isinstance(ready, bool):
        raise ConfigurationError("ready must be True or False")
    minter, payload = _minter(provider, api_key, base_url), _Payload(body)
    timeouts = minter.timeout if timeout is None else _check_timeout(timeout)
    seconds = minter.deadline if deadline is None else _check_seconds(deadline)
    job = (provider, minter, payload, timeouts, seconds, lifetime)
    if ready and (value := _here().ready.take(job)) is not None:
        return value
    return _mint_now(*job)


def _mint_now(provider: str, minter: _Transport, payload: _Payload, *call: Any) -> str:
    """POST one minting request: the credential in its answer, else CredentialError."""
    _, _, _, path, field, _ = _MINTERS[provider]
    try:
        value = _Secret(minter.call("POST", path, payload, *call[:2]).string(field))
        _SEEN.append(value)
        return value
    except AvaturnError as exc:
        # Chained to our own typed, redacted error (never a transport exception).
        raise CredentialError(
            f"{provider}: could not mint a credential: {exc}", provider=provider
        ) from exc


def _mint_with_sdk(client: Any, body: dict[str, Any], *options: Any) -> str:
    """Mint through the caller's ``openai.OpenAI`` (deprecated: no total deadline)."""
    import warnings

    lifetime, _, _, _, timeout, deadline = options
    _check_int(lifetime, "expires_in", *_MINTERS["openai"][5])
    message = "openai_client= is deprecated (no total deadline); mint without it"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    seconds = max(DEFAULT_TIMEOUT if timeout is None else _check_timeout(timeout))
    seconds_left = DEFAULT_DEADLINE if deadline is None else _check_seconds(deadline)
    left = min(_now() + seconds_left, _BUDGET.get())
    payload, failure, value = _Payload(body), "no client secret value", None
    try:
        sdk = client.with_options(timeout=min(seconds, left - _now()), max_retries=0)
        value = sdk.realtime.client_secrets.create(**payload.body).value
    except Exception as exc:  # noqa: BLE001 - any SDK failure is a CredentialError
        # The reason, not the exception: its frames hold the request's headers.
        key = _Secret(getattr(client, "api_key", None) or "")  # masked at once
        cause = exc.__cause__  # the SDK's "Connection error.": why, from httpx
        failure = f"{type(exc).__name__}: {exc}" + (f" ({cause!r})" if cause else "")
        failure = _redact(failure, _known_secrets((key, *payload.secrets)))
    if not isinstance(value, str) or not value:
        message = f"openai: could not mint a credential: {failure}"
        raise CredentialError(message, provider="openai")
    return _Secret(value)


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #


class AvaturnClient:
    """A thread-safe, fork-safe client for the Avaturn.Live session API.

    ``api_key``, ``base_url``: default ``AVATURN_API_KEY``, ``AVATURN_BASE_URL``
    or ``DEFAULT_BASE_URL`` (``http://`` for loopback hosts only). ``timeout``:
    seconds, or a ``(connect, read)`` pair; ``deadline``: seconds for a whole
    call, every attempt and wait included (each method takes both too);
    ``max_retries``: extra attempts, only where repeating cannot double-bill.
    ``http_session``: a ``requests.Session`` to send through, never closed;
    its adapters count no bytes (a failure through it counts as sent) and
    bound an answer's head per read only, not in total.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_session: requests.Session | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        key = _auth(api_key, "AVATURN_API_KEY")
        if base_url is None:
            base_url = os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL
        self._transport = _Transport(
            key, base_url, timeout, deadline, max_retries, http_session
        )
        self.base_url = self._transport.base_url
        # The environment a shared client was built from (see ``_client``).
        self._env: tuple[str | None, ...] = ()

    def __repr__(self) -> str:
        return f"AvaturnClient(base_url={getattr(self, 'base_url', None)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (only those of a session this client created)."""
        self._transport.close()

    def warm(self, *, deadline: float | None = None) -> bool:
        """Open this client's keep-alive connection now, sending nothing (see
        ``warm()``); False, logged as a WARNING, when it cannot."""
        return self._transport.warm(self._transport.expiry(deadline))

    def create_session(
        self,
        engine: Mapping[str, Any] | None = None,
        *,
        avatar_id: str | None = None,
        background: str | None = None,
        render_model: str | None = None,
        user_absent_timeout: int | None = None,
        max_duration: int | None = None,
        extra: Mapping[str, Any] | None = None,
        timeout: float | tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> AvaturnSession:
        """Create a session; returns its id, the browser token and the API host.

        ``engine``: any engine mapping; ``user_absent_timeout`` (>= 10) and
        ``max_duration`` (60..86400): seconds; ``extra``: more top-level fields.
        Only what was set is sent; bad input raises ``ConfigurationError`` first.
        Never sent twice. If anything fails once the server may have made the
        session, the session its answer names (read leniently) is ended within
        ``CLEANUP_GRACE``; the error says what may still run.
        """
        engine, extra = _hide(engine), _hide(extra)  # masked first, for any frame
        options: dict[str, Any] = {"avatar_id": avatar_id, "background": background}
        options |= {"render_model": render_model, "max_duration": max_duration}
        options |= {"user_absent_timeout": user_absent_timeout, "extra": extra}
        payload = _Payload(_build_create_body(engine, options))
        trail: list[_Attempt] = []  # every attempt, as it starts
        try:
            args = (payload, timeout, deadline, CLEANUP_GRACE / 2, trail)
            answer = self._transport.call("POST", _PATH_SESSIONS, *args)
            fields = answer.json_object()
            session_id, token = (fields.get(k) or "" for k in ("session_id", "token"))
            if not all(isinstance(v, str) and v for v in (session_id, token)):
                raise answer.unusable("has no 'session_id' and 'token' strings")
            _SEEN.append(token)
            return AvaturnSession(session_id, token, self.base_url)
        except BaseException as exc:  # ours, or the caller's (Ctrl-C, a time limit)
            last = trail[-1] if trail else None
            if last is not None and last.acted:  # end what its answer names, if any
                found = last.recover("session_id") if last.status < 300 else None
                until = last.expires_at + CLEANUP_GRACE
                if found is None or not self._end(found, "create failed", None, until):
                    _say_running(exc, found)
            raise

    def say(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Queue ``text`` for the avatar to speak (text-echo); returns the task id.
        Never retried once it may have reached the server (it would say it twice)."""
        path = _session_path(session_id) + "/tasks"
        if not _check_text(text, "text").strip():
            raise ConfigurationError("text must not be blank")
        payload = _Payload({"text": text})
        return self._transport.call("POST", path, payload, timeout, deadline).string(
            "task_id"
        )

    def terminate_session(
        self,
        session_id: str,
        *,
        timeout: float | tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> bool:
        """End a session; ``True`` if this call ended it, ``False`` if it was gone.

        Safe twice and in cleanup code. Timeouts, resets and 500/502/503/504 are
        retried; a 404 after an attempt that may have arrived counts as ended.
        """
        return self._terminate(session_id, timeout, self._transport.expiry(deadline))

    @contextlib.contextmanager
    def session(
        self, engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
    ) -> Iterator[AvaturnSession]:
        """Create a session for a ``with`` block; end it on leaving, whatever happens.

        Takes ``create_session``'s parameters. Ending it gets at least
        ``CLEANUP_GRACE``, even past a ``deadline()``. If ending fails while the
        block's own exception propagates, that one wins and a WARNING is logged.
        """
        engine = _hide(engine)  # masked first, in every frame
        created = self.create_session(engine, **options)
        timeout, deadline = options.get("timeout"), options.get("deadline")
        try:
            yield created
        except BaseException:
            until = self._transport.expiry(deadline, CLEANUP_GRACE)
            self._end(created.session_id, "after an error in the block", timeout, until)
            raise
        try:
            until = self._transport.expiry(deadline, CLEANUP_GRACE)
            self._terminate(created.session_id, timeout, until)
        except BaseException as exc:
            _say_running(exc, created.session_id)
            raise

    def _terminate(self, session_id: str, timeout: Any, until: float) -> bool:
        path = _session_path(session_id)
        answer = self._transport.call("DELETE", path, None, timeout, until=until)
        return answer.status not in _GONE or answer.acted_before

    def _end(self, session_id: str, why: str, timeout: Any, until: float) -> bool:
        """End a session this client made, by ``until``; on failure log a WARNING
        naming it and return False (the caller's own interruption goes on, after
        the WARNING)."""
        try:
            self._terminate(session_id, timeout, until)
        except BaseException as exc:
            _log.warning(
                "could not end session %s (%s): %s", _redact(session_id, ()), why, exc
            )
            if not isinstance(exc, AvaturnError):
                raise
            return False
        return True


def _say_running(exc: BaseException, session_id: str | None) -> None:
    """Say on ``exc`` (or, for the caller's own exception, in a WARNING) which
    session may still be running, or that one may have been created."""
    note = "a session may have been created"
    if session_id is not None:
        note = f"session {_redact(session_id, ())} may still be running"
    note += " (it ends by itself after user_absent_timeout)"
    if isinstance(exc, AvaturnError):
        message, fields = exc.args
        exc.args = (f"{message}; {note}", {**fields, "session_id": session_id})
        exc.session_id = session_id
    else:
        _log.warning("%s: %s", type(exc).__name__, note)


# --------------------------------------------------------------------------- #
# Module-level functions (one shared client, following the environment)
# --------------------------------------------------------------------------- #


def create_session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> AvaturnSession:
    """``AvaturnClient.create_session`` (``timeout=`` and ``deadline=`` too) on
    the shared client built from the environment."""
    engine = _hide(engine)  # masked first, in every frame
    return _client().create_session(engine, **options)


def say(
    session_id: str,
    text: str,
    *,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> str:
    """``AvaturnClient.say`` on the shared client built from the environment."""
    return _client().say(session_id, text, timeout=timeout, deadline=deadline)


def terminate_session(
    session_id: str,
    *,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> bool:
    """``AvaturnClient.terminate_session`` on the shared client built from the environment."""
    return _client().terminate_session(session_id, timeout=timeout, deadline=deadline)


def session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> contextlib.AbstractContextManager[AvaturnSession]:
    """``AvaturnClient.session`` on the shared client built from the environment."""
    engine = _hide(engine)  # masked first, in every frame
    return _client().session(engine, **options)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every call in the block, together, to ``seconds`` from now.

    Each call ends by the earlier of its own deadline and the block's (a
    create's cleanup gets ``CLEANUP_GRACE`` more); an inner block can only
    shorten an outer one. Context-local: right in threads and greenlets. Also
    a decorator, ``@av.deadline(20)``, over a plain view (a generator's or a
    coroutine's body runs after the call: put the block inside those).
    """
    outer = _BUDGET.get()
    _BUDGET.set(min(outer, _now() + _check_seconds(seconds, "seconds")))
    try:
        yield
    finally:  # set, not reset: the block may end in another copy of its context
        _BUDGET.set(outer)


def warm(*, deadline: float | None = None) -> list[str]:
    """Open the connections a first session start needs: once per worker, after fork.

    The shared client's, and each minting provider's whose key is set, in
    parallel, each within its connect timeout; nothing is sent, so nothing is
    billed. Credentials asked for with ``ready=True`` (in this process, or in
    its parent before fork) are minted ahead in the background. Returns the
    base URLs it could not reach (logged as WARNINGs); raises only
    ``ConfigurationError``. Safe twice and in a forked child.
    """
    transports = [_client()._transport]
    for provider, (key_variable, *_) in _MINTERS.items():
        if os.environ.get(key_variable):
            transports.append(_minter(provider, None, None))
    _here().ready.fill()
    until, cold, threads = transports[0].expiry(deadline), [], []  # the block: here

    def warm_one(transport: _Transport) -> None:
        if not transport.warm(until):
            cold.append(transport.base_url)

    # In parallel, on daemon threads: none is joined at exit, nor in a forked child.
    for transport in transports:
        thread = threading.Thread(target=warm_one, args=(transport,), daemon=True)
        try:
            thread.start()
            threads.append(thread)
        except RuntimeError:  # no thread to be had (interpreter shutdown): here
            warm_one(transport)
    for thread in threads:
        thread.join()
    return sorted(cold)


def close_shared_clients() -> None:
    """Release what the module shares in this process (the module-level
    functions' client, the minting connections) and stop minting ahead, e.g.
    at shutdown; all of it is built again on next use."""
    process = _processes.pop(os.getpid(), None)
    _JOBS.clear()
    if process is not None:
        process.ready.stop()
        for transport in [*process.minters.values(), process.client]:
            if transport is not None:
                transport.close()


def _client() -> AvaturnClient:
    """The shared client, built from one reading of the environment (again
    when it changes), once even under racing threads."""
    here = _here()
    key = _Secret(os.environ.get("AVATURN_API_KEY", ""))  # masked at once
    env = (key, os.environ.get("AVATURN_BASE_URL"))
    client = here.client
    if client is None or client._env != env:
        with here.lock:
            client = here.client
            if client is None or client._env != env:
                client = AvaturnClient(key, base_url=env[1] or DEFAULT_BASE_URL)
                client._env, here.client = env, client
    return client


def _minter(provider: str, api_key: str | None, base_url: str | None) -> _Transport:
    """The transport to a minting provider, its key, host and headers read once,
    here; kept per process, so that mints reuse one connection. Never retried."""
    key_variable, url_variable, default_url, *_ = _MINTERS[provider]
    key = _auth(api_key, key_variable)
    if base_url is None:
        base_url = os.environ.get(url_variable) or default_url
    headers = {"Cartesia-Version": _CARTESIA_VERSION}
    if provider == "openai":
        headers = {h: os.environ[v] for h, v in _OPENAI_HEADERS if os.environ.get(v)}
    for header, value in headers.items():
        if not _KEY_CHARS.fullmatch(value):
            raise ConfigurationError(f"{header} must be printable ASCII without spaces")
    minters, kept = _here().minters, (key, base_url, tuple(headers.items()))
    transport = minters.get(kept)
    if transport is None:
        if len(minters) >= _MAX_READY:
            minters.clear()  # dropped, not closed: another thread may be minting
        # racing threads all keep the one setdefault kept (never looked up again)
        transport = minters.setdefault(kept, _Transport(key, base_url, headers=headers))
    return transport


# --------------------------------------------------------------------------- #
# Transport: an attempt leaves facts, the loop decides, one error is built
# --------------------------------------------------------------------------- #

_GONE = (404, 410)
# Per request: proxies from the environment are not used (loopback hosts).
_NO_PROXIES: dict[str, Any] = {"http": None, "https": None, "all": None}
# What an attempt's I/O raises when no usable answer arrived. Anything else
# (Ctrl-C, a task's time limit, gevent's Timeout) is the caller's: it goes on.
# (requests' own exceptions are OSErrors.)
_NETWORK_ERRORS = (
    OSError,
    ValueError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
)
_TIMEOUTS = (TimeoutError, requests.Timeout, urllib3.exceptions.TimeoutError)

# When the ``deadline()`` block around the current call ends (context-local).
_BUDGET: contextvars.ContextVar[float] = contextvars.ContextVar(
    "avaturn_session.deadline", default=math.inf
)
_T = TypeVar("_T")


class _Payload:
    """A JSON request body: ``data`` as sent, ``secrets`` (every ``_Secret`` in
    it) to scrub from errors; its repr shows neither. What json refuses is a
    ConfigurationError, raised from a frame that holds only the hidden copy."""

    def __init__(self, body: Any) -> None:
        found: list[str] = []
        body, problem = _hide(body, found), None
        try:
            text = json.dumps(
                body, allow_nan=False, ensure_ascii=False, default=_not_json
            )
            self.data = _SecretBytes(text.encode("utf-8"))  # a lone surrogate fails
        except (TypeError, ValueError, RecursionError) as exc:
            problem = _CONTROL.sub(" ", str(exc))[:200]
        if problem is not None:
            raise ConfigurationError(f"the request is not valid JSON: {problem}")
        self.body, self.secrets = body, tuple(found)
        _SEEN.extend(found)

    def __repr__(self) -> str:
        return f"<_Payload {len(getattr(self, 'data', b''))} bytes>"


class _Attempt(urllib3.Timeout):
    """One attempt of a call. Handed to requests as its ``timeout``, it travels
    with the request down to our connections (no thread-local, no global): in,
    the deadline and each step's timeout; out, the facts where they happen
    (bytes of the request written), then the answer (status, headers, the body
    read so far), a failure or the caller's interruption. Its repr shows none."""

    def __init__(
        self,
        method: str,
        path: str,
        expires_at: float,
        timeouts: tuple[float, float],
        grace: float = 0.0,
    ) -> None:
        left = expires_at - _now()  # what urllib3 reads (a caller's http_session)
        super().__init__(left if left > 0 else None, *timeouts)
        self.method, self.path, self.expires_at = method, path, expires_at
        self.timeouts, self.grace = timeouts, grace  # grace: to read once sent
        # Bytes of the request written to a socket, counted where they are
        # written; None: handed to an adapter that does not count (maybe sent).
        self.sent: int | None = 0
        self.status, self.headers = 0, cast(Mapping[str, str], {})
        self.body = bytearray()
        self.problem: str | None = None  # why a 2xx body cannot be used
        self.failure: str | None = None  # why no (whole) answer arrived
        self.interrupt: BaseException | None = None  # the caller's (Ctrl-C)
        # timed out; the server may have done its work; an earlier one may have
        self.timed_out = self.acted = self.acted_before = False

    def __repr__(self) -> str:
        return f"<_Attempt {getattr(self, 'method', '')} {getattr(self, 'path', '')}>"

    def wait(self, seconds: float) -> float:
        """What one blocking step may wait: ``seconds``, cut to what is left of
        the deadline (the one clock); nothing at all once it has passed."""
        left = self.expires_at + (self.grace if self.sent else 0.0) - _now()
        if left <= 0:
            raise TimeoutError("deadline exceeded")
        return min(seconds, left)

    def string(self, name: str) -> str:
        """A non-empty string field of this 2xx JSON answer, else APIResponseError."""
        value = self.json_object().get(name)
        if not isinstance(value, str) or not value:
            raise self.unusable(f"has no {name!r} string")
        return value

    def json_object(self) -> dict[str, Any]:
        """The JSON object of this 2xx answer (secret-named strings hidden)."""
        try:  # a UnicodeDecodeError is a ValueError too
            fields = self.problem or json.loads(self.body, object_pairs_hook=_hidden)
        except (ValueError, RecursionError):
            fields = None
        if not isinstance(fields, dict):
            raise self.unusable(self.problem or "not a JSON object")
        return fields

    def unusable(self, why: str) -> APIResponseError:
        """The error for this answer, unusable because of ``why``."""
        message = f"{self.status} response to {self.method} {self.path}: {why}"
        return APIResponseError(
            message, status_code=self.status, method=self.method, path=self.path
        )

    def recover(self, name: str) -> str | None:
        """``name``'s value in the bytes read, however broken the rest: a
        compressed, cut-off or malformed answer can still name a session."""
        body = bytes(self.body)
        if self.headers.get("content-encoding", "").strip() in ("gzip", "deflate"):
            import zlib

            with contextlib.suppress(zlib.error):
                body = zlib.decompressobj(47).decompress(body, MAX_RESPONSE_BYTES)
        value = rb'("(?:[^"\\]|\\.){1,256}"|-?[\d.eE+]{1,40})'
        found = re.search(rb'"%s"\s*:\s*' % name.encode() + value, body)
        raw = found[1] if found else b""
        with contextlib.suppress(ValueError):
            text = json.loads(raw) if raw[:1] == b'"' else raw.decode()
            return text if isinstance(text, str) and text else None
        return None


class _Transport:
    """Requests to one host: the retry rules, the deadline and the caps, on a
    session of this process's own (fork by pid) unless given one."""

    def __init__(
        self,
        key: str,
        base_url: object,
        timeout: object = DEFAULT_TIMEOUT,
        deadline: object = DEFAULT_DEADLINE,
        max_retries: object = 0,
        http_session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.key, self.base_url = _Secret(key), _check_base_url(base_url)
        self.timeout, self.deadline = _check_timeout(timeout), _check_seconds(deadline)
        self.max_retries = _check_int(max_retries, "max_retries", 0, None)
        if http_session is not None and not isinstance(http_session, requests.Session):
            raise ConfigurationError("http_session must be a requests.Session")
        # Ours, by pid: a forked child builds its own, whether or not at-fork
        # handlers ran, and never shares a socket with its parent.
        self.given, self.own = http_session, {os.getpid(): _new_http_session()}
        # A proxy from the environment would see a loopback request in clear.
        host = urllib.parse.urlsplit(self.base_url).hostname
        self.proxies = dict(_NO_PROXIES) if _is_loopback(host) else {}
        # identity: the body caps count what the server sends, nothing inflates.
        self.headers = {
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
            "Authorization": _Secret("Bearer " + self.key),
            **(headers or {}),
        }

    def __repr__(self) -> str:
        return f"_Transport(base_url={getattr(self, 'base_url', None)!r})"

    def close(self) -> None:
        own = self.own.pop(os.getpid(), None)  # a later call builds a new session
        if own is not None:
            own.close()

    def expiry(self, deadline: object, least: float = 0.0) -> float:
        """When a call starting now must end (``deadline`` None: this transport's):
        never after the ``deadline()`` block around it, unless it has ``least``."""
        seconds = self.deadline if deadline is None else _check_seconds(deadline)
        return max(min(_now() + seconds, _BUDGET.get()), _now() + least)

    def call(
        self,
        method: str,
        path: str,
        payload: _Payload | None = None,
        timeout: object = None,
        deadline: object = None,
        grace: float = 0.0,
        trail: list[_Attempt] | None = None,
        *,
        until: float | None = None,
    ) -> _Attempt:
        """Send with the retry rules; returns the last attempt, a 2xx answer (a
        404/410 too for a DELETE), else raises the typed error (built once, here,
        when the loop gives up) or the caller's interruption. ``grace``: seconds
        past the deadline to read an answer once sent (read late, it counts as
        timed out); ``trail`` gets every attempt as it starts; ``until``
        replaces the deadline."""
        timeouts = self.timeout if timeout is None else _check_timeout(timeout)
        if until is None:
            seconds = self.deadline if deadline is None else _check_seconds(deadline)
            until = min(_now() + seconds, _BUDGET.get())
        trail = [] if trail is None else trail
        while True:
            attempt = _Attempt(method, path, until, timeouts, grace)
            trail.append(attempt)
            started = _now()
            try:
                self._send(payload, attempt)
            except BaseException as late:  # noqa: BLE001 - the caller's, as _send sorted
                attempt.interrupt = _cut(late)
            status, failed = attempt.status, attempt.failure is not None
            if failed or attempt.interrupt is not None:
                attempt.acted = attempt.sent != 0
                label = "timeout" if attempt.timed_out else "connection error"
                label = label if failed else "interrupted"
            else:  # 503 says it did nothing; any other 5xx may have (and a 1xx a
                # caller's adapter took as the answer: the real one is lost)
                attempt.acted = status < 300 or status >= 500 and status != 503
                label = f"{status} {_PHRASES.get(status, 'Error')}"
            took = (_now() - started) * 1000
            info = (method, path, label, took, len(trail))
            _log.debug("%s %s -> %s in %.1f ms (attempt %d)", *info)
            if attempt.interrupt is not None:
                raise attempt.interrupt
            gone = method == "DELETE" and status in _GONE
            if (200 <= status < 300 or gone) and not failed:
                attempt.acted_before = any(a.acted for a in trail[:-1])
                return attempt
            header = attempt.headers.get("retry-after")
            retry_after = _parse_retry_after(header) if header else None
            retry = len(trail) <= self.max_retries and _should_retry(
                method, attempt, retry_after
            )
            delay = _retry_delay(len(trail) - 1, retry_after) if retry else 0.0
            # A wait that crosses the deadline is not waited for.
            if not retry or _now() + delay >= until:
                secrets = (self.key, *(payload.secrets if payload else ()))
                try:  # the server's text is in the frames below: an interruption
                    error = _error(attempt, retry_after, _known_secrets(secrets))
                except BaseException as late:  # noqa: BLE001 - goes on without them
                    raise _cut(late) from None
                raise error
            why = (method, path, delay, len(trail), self.max_retries, label)
            _log.warning("retrying %s %s in %.2f s (retry %d of %d): %s", *why)
            _sleep(delay)

    def _send(self, payload: _Payload | None, attempt: _Attempt) -> None:
        """One attempt; what happened is left on ``attempt``. Whatever is raised
        below stays here: a failure becomes its reason (text), the caller's
        interruption is kept with its traceback cut, so no frame of requests or
        of our connections (they hold the request's bytes) is in a traceback."""
        try:
            attempt.wait(math.inf)  # nothing is handed on once the deadline passed
            pid, url = os.getpid(), self.base_url + attempt.path
            http = (
                self.given
                or self.own.get(pid)
                or self.own.setdefault(pid, _new_http_session())
            )
            data = payload.data if payload else None
            headers = requests.structures.CaseInsensitiveDict(http.headers)
            headers.update(self.headers)  # ours over the session's, in any case
            # Not prepared by the session: no netrc, no session auth over ours;
            # a header the session set to None is not sent, as requests does.
            kept = {k: v for k, v in headers.items() if v is not None}
            prepared = requests.Request(attempt.method, url, kept, data=data).prepare()
            settings: Any = http.merge_environment_settings(  # fills the dict given
                url, dict(self.proxies), True, None, None
            )
            verify = settings["verify"]
            if isinstance(verify, str) and not os.path.exists(verify):  # mistyped?
                raise FileNotFoundError(f"no CA certificates at {verify}")
            attempt.sent = None  # unknown, unless our connections count it
            # The adapter, not Session.send: that reads a redirect's body whole.
            with http.get_adapter(url).send(
                prepared, timeout=cast(Any, attempt), **settings
            ) as response:  # closed inside, whatever happens
                attempt.status, attempt.headers = response.status_code, response.headers
                raw: Any = response.raw
                cap = (
                    MAX_RESPONSE_BYTES if attempt.status < 300 else MAX_ERROR_BODY_BYTES
                )
                encoding = attempt.headers.get("content-encoding", "identity").strip()
                if encoding.lower() not in ("identity", ""):
                    attempt.problem = f"unsupported Content-Encoding {encoding[:40]!r}"
                for chunk in iter(lambda: raw.read1(_READ_CHUNK), b""):
                    attempt.body += chunk  # what has come, each read bounded alone
                    if len(attempt.body) > cap:
                        attempt.problem = f"body larger than {cap} bytes"
                        break
                    attempt.wait(math.inf)  # a caller's session's reads: in total too
                else:  # read to its end (ours: http.client says nothing if cut off)
                    if isinstance(raw, _Answer) and raw.length:
                        short = f"the answer was cut off, {raw.length} bytes short"
                        raise _ProtocolError(short)
                    raw.whole = True  # ours goes back to the pool
                del attempt.body[cap:]
                if attempt.grace and _now() > attempt.expires_at:  # read in the grace
                    raise TimeoutError("deadline exceeded")
        except BaseException as exc:  # noqa: BLE001 - sorted here; nothing below goes on
            inner = (
                exc.__context__ if isinstance(exc, requests.RequestException) else exc
            )
            if not isinstance(_cut(exc), _NETWORK_ERRORS):  # the caller's: Ctrl-C
                attempt.interrupt = exc
                return
            # requests wraps what our connections raise: the reason is theirs
            inner = inner if isinstance(inner, Exception) else exc
            attempt.failure = f"{type(inner).__name__.lstrip('_')}: {inner}"
            attempt.timed_out = isinstance(inner, _TIMEOUTS) or isinstance(
                exc, _TIMEOUTS
            )

    def warm(self, until: float) -> bool:
        """Open one keep-alive connection to the host now, sending nothing, unless
        one waits fresh (only on our own connections; a caller's is left alone)."""
        pid, url = os.getpid(), self.base_url + "/"
        http = (
            self.given
            or self.own.get(pid)
            or self.own.setdefault(pid, _new_http_session())
        )
        adapter = http.get_adapter(url)
        if not isinstance(adapter, _Adapter):
            return True
        attempt = _Attempt(
            "GET", "/", min(until, _now() + self.timeout[0]), self.timeout
        )
        try:  # the route a request takes: the same proxies and verify
            env = http.merge_environment_settings(
                url, dict(self.proxies), None, None, None
            )
            request = requests.Request("GET", url).prepare()
            route = adapter.get_connection_with_tls_context(
                request, env["verify"], env["proxies"], env["cert"]
            )
            idle = list(adapter.idle)  # a look: another call may take one meanwhile
            fresh = any(c.route == route and _now() < c.reusable_until for c in idle)
            if isinstance(route, _Route) and not fresh:
                adapter.checkin(_Conn(attempt, route), None)
        except _NETWORK_ERRORS as exc:
            reason = _redact(f"{type(exc).__name__}: {exc}", (self.key,))
            _log.warning("could not warm %s: %s", self.base_url, reason)
            return False
        return True


def _cut(exc: BaseException) -> BaseException:
    """``exc`` with no traceback, cause or context: whatever it passed through
    below this module's call (requests, the connections) stays behind."""
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)


def _error(
    attempt: _Attempt, retry_after: float | None, secrets: Sequence[str]
) -> AvaturnError:
    """The typed, redacted error for the attempt the loop gave up on."""
    method, path, status = attempt.method, attempt.path, attempt.status
    if attempt.failure is not None:
        kind = APITimeoutError if attempt.timed_out else APIConnectionError
        what = "timed out" if attempt.timed_out else "failed"
        message = f"{method} {path} {what}: {_redact(attempt.failure, secrets)}"
        sent = attempt.sent != 0
        return kind(message, method=method, path=path, request_sent=sent)
    if status < 200:  # a caller's adapter took it as the answer: the real one is lost
        return attempt.unusable("an informational answer; the real one was not read")
    if status < 400:
        return attempt.unusable("a redirect, not followed (check the base URL)")
    text = bytes(attempt.body).decode("utf-8", errors="replace")
    try:
        body = _redact_json(json.loads(text), secrets)
    except (ValueError, RecursionError):
        body = _redact(_TAGS.sub(" ", text), secrets) or None
    fields = body if isinstance(body, dict) else {}
    detail = next(
        (fields[k] for k in ("detail", "message", "error") if k in fields), body
    )
    # A server's detail as one clean line: a string, FastAPI's list, any JSON.
    if isinstance(detail, list) and all(isinstance(item, Mapping) for item in detail):
        parts = []
        for item in detail:
            loc = item.get("loc")
            steps = loc if isinstance(loc, list) else [] if loc is None else [loc]
            where = ".".join(str(p) for p in steps if p != "body")
            msg = str(item.get("msg", item))
            parts.append(f"{where}: {msg}" if where else msg)
        shown = "; ".join(parts)
    else:
        shown = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    shown = "" if detail is None or detail == "" else _redact(shown, ())
    request_id = attempt.headers.get("x-request-id")
    request_id = request_id and (_redact(request_id, secrets, limit=100) or None)
    message = f"{status} {_PHRASES.get(status, 'Error')}"
    message += f" (request {request_id})" if request_id else ""
    cls = APIStatusError  # the class for the status
    if status == 400:
        cls = BadRequestError
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 410:
        cls = GoneError
    elif status == 422:
        cls = UnprocessableEntityError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = InternalServerError
    about = {"status_code": status, "detail": detail, "request_id": request_id}
    about |= {"method": method, "path": path, "body": body, "retry_after": retry_after}
    errors = list(detail) if isinstance(detail, list) else []
    return cls(f"{message}: {shown}" if shown else message, about, errors=errors)


def _new_http_session() -> requests.Session:
    """A requests session on our connections (cookies never go out: requests
    are prepared without it)."""
    http_session, adapter = requests.Session(), _Adapter()
    http_session.mount("https://", adapter)
    http_session.mount("http://", adapter)
    return http_session


# -- our connections: every step on the attempt's clock, sent bytes counted -- #


class _ProtocolError(ConnectionError):
    """The server broke HTTP/1.1: a bad status line or header, conflicting
    lengths, an answer cut off."""


def _io(
    attempt: _Attempt,
    sock: socket.socket,
    seconds: float,
    step: Callable[..., _T],
    *args: Any,
) -> _T:
    """One blocking step on ``sock``: it waits at most ``seconds``, and never
    past the attempt's deadline. Every socket step of ours goes through here."""
    sock.settimeout(attempt.wait(seconds))
    try:
        return step(*args)
    except TimeoutError:
        attempt.wait(seconds)  # the deadline, if it passed: say so
        raise


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter on this module's HTTP/1.1 connections, pooled here
    (``idle``); through an HTTPS or SOCKS proxy, urllib3's own (counting nothing)."""

    def __init__(self) -> None:
        super().__init__(pool_connections=1, max_retries=0)
        self.idle: list[_Conn] = []
        self.closed = False  # then a connection coming back from a call is closed

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> Any:
        proxy = requests.utils.select_proxy(request.url, proxies)
        proxy = proxy if not proxy or "://" in proxy else "http://" + proxy
        if proxy and not proxy.lower().startswith("http://"):
            return super().get_connection_with_tls_context(
                request, verify, proxies, cert
            )
        parts = urllib.parse.urlsplit(request.url)
        return _Route(self, f"{parts.scheme}://{parts.netloc}", proxy, verify)

    def checkin(self, conn: _Conn, answer: _Answer | None) -> None:
        """Keep ``conn`` for reuse after ``answer`` (only read to its end and kept
        alive; idle time from now), or as it is (``None``); closed instead if the
        pool is full or closed."""
        if answer is not None:
            if not answer.whole or answer.will_close:
                conn.close()
                return
            match = _KEEP_ALIVE_TIMEOUT.search(answer.headers.get("keep-alive", ""))
            expiry = KEEPALIVE_EXPIRY if match is None else float(match[1]) - 1.0
            conn.reusable_until = _now() + min(expiry, KEEPALIVE_EXPIRY)
        self.idle.append(conn)
        if len(self.idle) > DEFAULT_POOL_MAXSIZE or self.closed:
            with contextlib.suppress(ValueError):  # taken meanwhile: the taker's
                self.idle.remove(conn)
                conn.close()

    def close(self) -> None:
        super().close()
        self.closed = True
        with contextlib.suppress(IndexError):  # a call in flight took the last
            while True:
                self.idle.pop().close()


class _Route(
    NamedTuple(
        "_Route",
        [("adapter", _Adapter), ("origin", str), ("proxy", Any), ("verify", Any)],
    )
):
    """Where a request goes (scheme and host, proxy, CA certificates): what
    requests calls a pool (its ``cert_verify`` notes urllib3 settings on it)."""

    def urlopen(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Any = None,
        timeout: Any = None,
        **_: Any,
    ) -> _Answer:
        """Write the request on an idle connection or a new one; read the answer's head."""
        attempt = cast(_Attempt, timeout)  # requests passes our _Attempt through
        sent = attempt.sent = 0  # counted from here, where the bytes are written
        idle, conn = self.adapter.idle, None
        while idle and conn is None:
            with contextlib.suppress(IndexError):  # another thread took the last one
                conn = idle.pop()
                if conn.route != self or not conn.alive():
                    conn.close()
                    conn = None
        conn = conn or _Conn(attempt, self)
        conn.attempt = attempt
        try:  # a TLS record at a time: a record half on the wire is not counted
            host = {"Host": self.origin.partition("://")[2]}  # requests sets none
            view = _masked(f"{method} {url} HTTP/1.1\r\n", host | dict(headers), body)
            while view:
                written = _io(
                    attempt,
                    conn.sock,
                    attempt.timeouts[1],
                    conn.sock.send,
                    view[:16384],
                )
                attempt.sent = sent = sent + written
                view = view[written:]
            answer = _Answer(cast(socket.socket, conn), method=method)
            answer.begin()
            while 100 < answer.status < 200:  # http.client skips only 100 Continue
                answer.headers = None  # 103 Early Hints and the like: the next one
                answer.begin()
            if len({v.strip() for v in answer.msg.get_all("content-length", [])}) > 1:
                raise _ProtocolError("the answer has Content-Lengths that disagree")
            # for requests: a field sent twice is both values, comma-joined
            answer.headers = {
                k.lower(): ", ".join(answer.msg.get_all(k, [])) for k in answer.msg
            }
            answer.release_conn = functools.partial(self.adapter.checkin, conn, answer)
            return answer
        except BaseException:
            conn.close()
            raise


class _Conn:
    """One HTTP/1.1 connection of ours: the socket, the attempt using it, and
    until when it may be reused. Opened on the attempt's clock: resolve,
    connect to each address in turn, tunnel through the proxy, TLS handshake."""

    def __init__(self, attempt: _Attempt, route: _Route) -> None:
        self.attempt, self.route = attempt, route
        self.reusable_until = _now() + KEEPALIVE_EXPIRY  # from now, if never used
        parts = urllib.parse.urlsplit(route.origin)
        host, tls = parts.hostname or "", parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        proxy = urllib.parse.urlsplit(route.proxy) if route.proxy else None
        where = (proxy.hostname or "", proxy.port or 80) if proxy else (host, port)
        try:  # an IP address: nothing to look up, no thread to wait for
            found = socket.getaddrinfo(
                *where, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            found = _resolve(attempt, *where)
        error: OSError = _ProtocolError(f"{where[0]} has no address")
        for family, kind, proto, _, address in found:
            self.sock = socket.socket(family, kind, proto)
            try:
                _io(attempt, self.sock, attempt.timeouts[0], self.sock.connect, address)
                break
            except OSError as exc:
                self.sock.close()
                error = exc
        else:
            raise error
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None:  # a tunnel (CONNECT): not the request, not counted
                target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                fields = {"Host": target}
                if proxy.username is not None:
                    login = _Secret(
                        ":".join(requests.utils.get_auth_from_url(route.proxy))
                    )
                    fields["Proxy-Authorization"] = _Secret(
                        "Basic " + base64.b64encode(login.encode()).decode()
                    )
                view = _masked(f"CONNECT {target} HTTP/1.1\r\n", fields, None)
                while view:
                    sent = _io(
                        attempt, self.sock, attempt.timeouts[1], self.sock.send, view
                    )
                    view = view[sent:]
                tunnel = http.client.HTTPResponse(
                    cast(socket.socket, self), method="CONNECT"
                )
                tunnel.begin()
                if tunnel.status != 200:
                    raise _ProtocolError(f"the proxy refused a tunnel to {target}")
            if tls:
                context = _tls_context(route.verify)
                self.sock = context.wrap_socket(
                    self.sock, server_hostname=host, do_handshake_on_connect=False
                )
                _io(attempt, self.sock, attempt.timeouts[0], self.sock.do_handshake)
        except BaseException:
            self.sock.close()
            raise

    def makefile(self, mode: str) -> io.BufferedReader:
        """What http.client reads an answer through: each read on the clock."""
        reader = _Reader(self.sock, "rb")
        reader.conn = self
        return io.BufferedReader(reader)

    def alive(self) -> bool:
        """Idle, fresh, and still open: nothing to read (or only TLS records)."""
        if _now() >= self.reusable_until:
            return False
        try:
            self.sock.settimeout(0.0)
            self.sock.recv(1)  # b"": closed by the server; a byte: not ours to read
        except (BlockingIOError, ssl.SSLWantReadError):
            return True  # nothing (a TLS 1.3 session ticket, now processed)
        except OSError:
            pass
        return False

    def close(self) -> None:
        self.sock.close()


class _Reader(socket.SocketIO):
    """A connection's reads for one answer, each waiting at most the read
    timeout and never past the deadline of the attempt using the connection."""

    conn: _Conn

    def readinto(self, buffer: Any) -> int:
        attempt, sock = self.conn.attempt, self.conn.sock
        return _io(attempt, sock, attempt.timeouts[1], sock.recv_into, buffer)


class _Answer(http.client.HTTPResponse):
    """http.client's answer on one of our connections, as requests' ``raw``.
    requests calls ``release_conn`` when it closes the answer: read whole and
    nothing said against it, the connection goes back to the pool."""

    headers: Any  # as requests reads them: lower-case names
    release_conn: Callable[[], None]
    whole = False  # read to its end


_KEEP_ALIVE_TIMEOUT = re.compile(r"timeout=(\d{1,6})")


def _tls_context(verify: Any) -> ssl.SSLContext:
    """This process's TLS context for requests' ``verify``: certifi's bundle by
    default (as requests), or the given CA file or folder."""
    contexts = _here().contexts
    if verify not in contexts:
        context = ssl.create_default_context()
        if verify is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        else:
            where = (
                requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
            )
            place = "capath" if os.path.isdir(where) else "cafile"
            context.load_verify_locations(**{place: where})
        context.set_alpn_protocols(["http/1.1"])
        contexts[verify] = context
    return contexts[verify]


class _Lookup:
    """One name resolution in flight, shared by every caller for that host."""

    def __init__(self) -> None:
        self.done, self.result = threading.Event(), cast(Any, [])

    def run(
        self, lookups: dict[tuple[str, int], _Lookup], host: str, port: int
    ) -> None:
        try:
            self.result = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            self.result = exc
        finally:
            lookups.pop((host, port), None)
            self.done.set()


def _resolve(attempt: _Attempt, host: str, port: int) -> list[Any]:
    """``getaddrinfo``, waited for at most the connect timeout and the deadline.
    Callers for one host share one lookup on a daemon thread (a stalled
    resolver holds one thread per host, never more); with no thread to be had
    (interpreter shutdown, a thread limit), the caller runs it."""
    lookups = _here().lookups
    lookup = lookups.setdefault((host, port), mine := _Lookup())
    if lookup is mine:
        try:
            thread = threading.Thread(target=mine.run, args=(lookups, host, port))
            thread.daemon = True
            thread.start()
        except RuntimeError:
            mine.run(lookups, host, port)
    if not lookup.done.wait(attempt.wait(attempt.timeouts[0])):
        attempt.wait(attempt.timeouts[0])  # the deadline, if it passed: say so
        raise TimeoutError(f"resolving {host} timed out")
    if isinstance(lookup.result, BaseException):
        raise type(lookup.result)(*lookup.result.args)  # a fresh one per caller
    return cast(list[Any], lookup.result)


# -- what a process shares: fork by pid -------------------------------------- #


class _Process:
    """What this process shares: the module-level functions' client, minting
    transports, name lookups in flight, TLS contexts, ready credentials. A
    forked child builds its own on first use, whether or not at-fork handlers
    ran (uWSGI): it never uses its parent's sockets, locks or threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: AvaturnClient | None = None
        self.minters: dict[tuple[Any, ...], _Transport] = {}
        self.lookups: dict[tuple[str, int], _Lookup] = {}
        self.contexts: dict[Any, ssl.SSLContext] = {}  # by requests' verify
        self.ready = _Ready()


# Each process's, by pid: a forked child finds none and builds its own; racing
# threads in a new process all keep the one ``setdefault`` kept.
_processes: dict[int, _Process] = {}


def _here() -> _Process:
    """This process's shared state (built anew in a forked child)."""
    pid = os.getpid()
    return _processes.get(pid) or _processes.setdefault(pid, _Process())


# How each configuration asked for with ``ready=True`` is minted: kept across
# fork (``warm()`` in a child mints ahead for them), never its credentials.
_JOBS: dict[tuple[Any, ...], tuple[Any, ...]] = {}


class _Ready:
    """Credentials minted ahead, at most one per configuration, each handed out
    once; one helper thread per process mints them, one at a time, off every
    caller's path. Idle, a configuration costs at most one mint per lifetime."""

    def __init__(self) -> None:
        self.cond, self.stopped = threading.Condition(), False
        self.thread: threading.Thread | None = None
        self.values: dict[tuple[Any, ...], tuple[str, float]] = {}
        self.due: dict[tuple[Any, ...], float] = {}  # next mint, at the earliest
        self.failing: set[tuple[Any, ...]] = set()

    def take(self, job: tuple[Any, ...]) -> str | None:
        """The ready credential for ``job``'s configuration, if fresh enough:
        taken, so nobody else gets it; its replacement is due at once."""
        provider, minter, payload, *_, lifetime = job
        headers = tuple(minter.headers.items())
        key = (provider, minter.key, minter.base_url, headers, payload.data, lifetime)
        with self.cond:
            if key not in _JOBS and len(_JOBS) >= _MAX_READY:
                return None
            _JOBS[key] = job
            value, minted_at = self.values.pop(key, (None, 0.0))
            self.due[key] = _now()
            self.wake()
        if value is not None and _now() - minted_at <= lifetime * (1 - READY_MIN_LIFE):
            return value
        return None

    def fill(self) -> None:
        """Mint ahead now for every configuration known (``warm()``)."""
        with self.cond:
            self.due.update(dict.fromkeys(_JOBS, _now()))
            self.wake()

    def wake(self) -> None:
        if self.thread is None and not self.stopped:
            self.thread = threading.Thread(target=self.run, name=_READY_THREAD)
            self.thread.daemon = True
            try:
                self.thread.start()
            except RuntimeError:  # no thread to be had: callers mint inline
                self.thread = None
        self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                now = _now()
                due = [key for key, when in self.due.items() if when <= now]
                if self.stopped:
                    return
                if not due:
                    self.cond.wait(min(self.due.values(), default=now + 3600) - now)
                    continue
                key, job = due[0], _JOBS.get(due[0])
                self.due[key] = now + key[-1]  # idle: one mint per lifetime at most
            if job is None:  # forgotten (close_shared_clients)
                continue
            try:
                value = _mint_now(*job)
            except Exception as exc:  # noqa: BLE001 - logged once, never raised
                if key not in self.failing:
                    _log.warning("could not mint a credential ahead: %s", exc)
                self.failing.add(key)
                continue
            self.failing.discard(key)
            with self.cond:
                self.values[key] = (value, now)


# --------------------------------------------------------------------------- #
# Retry policy
# --------------------------------------------------------------------------- #


def _should_retry(method: str, attempt: _Attempt, retry_after: float | None) -> bool:
    """Whether a failed attempt may be sent again without risking double work."""
    # Waiting minutes would block the caller's web request.
    if retry_after is not None and retry_after > MAX_RETRY_AFTER:
        return False
    # Not one byte of the request was written (refused, DNS, connect timeout).
    if attempt.failure is not None and attempt.sent == 0:
        return True
    # 429 and 503: the server turned the request away without doing it.
    if attempt.status in (429, 503):
        return True
    # Past this point the server may have done the work: only DELETE is idempotent.
    if method != "DELETE":
        return False
    # DELETE: read timeouts, resets and cut-off answers after sending.
    if attempt.failure is not None:
        return True
    # DELETE: transient server and gateway failures.
    return attempt.status in (500, 502, 504)


def _retry_delay(retries_done: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the jittered backoff, or the server's
    ``Retry-After`` when longer (so ``Retry-After: 0`` is never a hot loop)."""
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_done, 32), MAX_RETRY_DELAY)
    backoff *= 1 - _JITTER * _random()
    return backoff if retry_after is None else max(retry_after, backoff)


# The clock every deadline is measured on, the one way this module waits, and
# the jitter's randomness: module attributes, so that tests can patch them.
_now = time.monotonic
_random = random.random


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up now: gevent's, when it patched after import


def _parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if bad."""
    value = value.strip()[:64]
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only here: a dated Retry-After is rare

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


# --------------------------------------------------------------------------- #
# Validation (of hidden copies: no frame here holds a plain secret)
# --------------------------------------------------------------------------- #

# Required non-empty string fields of the engine types the library knows.
_ENGINE_REQUIRED: dict[str, tuple[str, ...]] = {
    "openai-realtime": ("client_secret",),
    "cartesia": ("access_token", "agent_id"),
    "external": ("url",),
}


def _build_create_body(engine: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Validate the create options; the JSON body with only the fields that were set."""
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    extra = given.pop("extra", {})
    body = {} if engine is None else {"conversation_engine": _check_engine(engine)}
    for name, value in given.items():
        if name in ("avatar_id", "render_model"):
            _check_text(value, name)
        elif name == "background" and value not in _BACKGROUNDS:
            raise ConfigurationError(f"background must be one of {_BACKGROUNDS}")
        elif name in _LIMITS:
            _check_int(value, name, *_LIMITS[name])
        body[name] = value
    if not isinstance(extra, dict):
        raise ConfigurationError("extra must be a mapping of top-level fields")
    for key, value in extra.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError("extra keys must be non-empty strings")
        if key == "conversation_engine" or key in _CreateOptions.__annotations__:
            named = "engine" if key == "conversation_engine" else key  # a parameter
            raise ConfigurationError(f"extra repeats {key!r}: pass it as {named}=")
        body[key] = value
    return body


def _check_engine(engine: Any) -> dict[str, Any]:
    """A valid engine, as a copy; unknown types pass through."""
    engine = _hide(engine)  # credentials masked: no frame here holds a plain one
    if not isinstance(engine, dict):
        raise ConfigurationError("engine must be a mapping with a 'type'")
    kind = engine.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError("engine needs a non-empty string 'type'")
    for name in _ENGINE_REQUIRED.get(kind, ()):
        value = engine.get(name)
        if not isinstance(value, str) or not value or _SURROGATE.search(value):
            raise ConfigurationError(f"{kind} engine needs a non-empty string {name!r}")
    if kind == "text-echo":
        tts = engine.get("tts")
        voice = tts.get("voice_id") if isinstance(tts, dict) else None
        if not isinstance(voice, str) or not voice:
            raise ConfigurationError("text-echo engine needs a non-empty tts.voice_id")
    if kind == "external":
        parts = _split_url(engine["url"], "external engine url")
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ConfigurationError("external engine url must be ws:// or wss://")
        headers = engine.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str)
            and k
            and isinstance(v, str)
            and not _CONTROL.search(k + v)
            for k, v in headers.items()
        ):
            raise ConfigurationError("external engine headers must be plain strings")
        audio = engine.get("audio")
        if audio is not None:
            user = audio.get("user") if isinstance(audio, dict) else None
            rate = user.get("sample_rate") if isinstance(user, dict) else None
            _check_int(rate, "user_sample_rate", 1, None)
    return engine


def _check_text(value: object, name: str) -> str:
    """A non-empty string that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    if _SURROGATE.search(value):
        raise ConfigurationError(f"{name} is not valid Unicode text")
    return value


def _check_int(value: object, name: str, low: int, high: int | None) -> int:
    """An int (not a bool) within [low, high]; ``high=None`` means ``_MAX_INT``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer")
    if value < low or value > (_MAX_INT if high is None else high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        shown = str(value) if -(10**15) < value < 10**15 else "a huge number"
        raise ConfigurationError(f"{name} must be {bounds}, got {shown}")
    return value


def _auth(given: str | None, variable: str) -> _Secret:
    """The API key from the argument (even an empty one), else the environment;
    masked at once: from its first line, this frame holds only ``***``."""
    if given is not None and not isinstance(given, str):
        raise ConfigurationError("the API key must be a string")
    key, given = _Secret(os.environ.get(variable, "") if given is None else given), None
    _SEEN.append(key)
    if not key:
        raise ConfigurationError(f"no API key: pass api_key or set {variable}")
    if not _KEY_CHARS.fullmatch(key):
        raise ConfigurationError("the API key has whitespace or odd characters")
    return key


def _split_url(url: object, name: str) -> urllib.parse.SplitResult:
    """``urlsplit`` that refuses what it or the port parser would choke on."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{name} must be a string")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or _CONTROL.search(url):
        raise ConfigurationError(f"{name} is not a valid URL")
    return parts


def _check_base_url(url: object) -> str:
    """``https://`` URL (``http://`` only for loopback hosts), without a trailing slash."""
    parts = _split_url(url, "base_url")
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError("base_url must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError("base_url must be https (http: loopback only)")
    root = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    try:  # what requests itself would refuse at send time (bad IDNA host, ...)
        requests.PreparedRequest().prepare_url(root + _PATH_SESSIONS, None)
        root.encode("ascii")
    except (requests.RequestException, ValueError):
        raise ConfigurationError("base_url is not a valid URL") from None
    return root


def _is_loopback(host: str | None) -> bool:
    import ipaddress  # only here: most hosts are names

    try:
        return host == "localhost" or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_timeout(timeout: object) -> tuple[float, float]:
    """A positive number or a (connect, read) pair of them, as a pair; never None."""
    if timeout is None:
        raise ConfigurationError("timeout must not be None: no call may hang forever")
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return (
            _check_seconds(timeout[0], "timeout"),
            _check_seconds(timeout[1], "timeout"),
        )
    seconds = _check_seconds(timeout, "timeout")
    return (seconds, seconds)


def _check_seconds(value: object, name: str = "deadline") -> float:
    """Positive seconds, at most a day (NaN, bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        value = math.nan  # refused below, as NaN is
    if not 0 < value <= _MAX_SECONDS:
        pair = ", or a (connect, read) pair" if name == "timeout" else ""
        raise ConfigurationError(
            f"{name} must be positive seconds (a day at most){pair}"
        )
    return float(value)


def _session_path(session_id: str) -> str:
    """The session's URL path, the id percent-encoded as exactly one segment."""
    _check_text(session_id, "session_id")
    # requests decodes %2E back to ".", so a dot-segment cannot be encoded away.
    if session_id in (".", ".."):
        raise ConfigurationError("session_id must not be '.' or '..'")
    return _PATH_SESSIONS + "/" + urllib.parse.quote(session_id, safe="")


# --------------------------------------------------------------------------- #
# Redaction: secrets as _Secret values, scrubbed from anything a server says
# --------------------------------------------------------------------------- #

_REDACTED = "***"
# Shorter values are not scrubbed by value (they would shred every message);
# real keys and tokens are far longer, and secret-named fields are hidden anyway.
_MIN_SECRET_CHARS = 4

# Names whose values are credentials, at any depth, in any case or spelling
# (client_secret, accessToken, xi_api_key, refresh_token, Authorization, ...).
_SECRET_NAME = re.compile(
    r"secret|token|passw|api_?key|^key$|auth|credential|cookie|signature|private|headers",
    re.IGNORECASE,
)
# C0 and C1 control characters: a server's ESC or BEL never reaches a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What an API key may hold: printable ASCII, no space (no header injection).
_KEY_CHARS = re.compile(r"[!-~]+")
_USERINFO = re.compile(r"//[^/@\s]+@")
_QUERY = re.compile(r"\?[^\s'\")\]]*")
_TAGS = re.compile(r"<[^>]{0,200}>")
# A lone surrogate: UTF-8 cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")

# The last secrets this process handled (keys, credentials it minted or sent,
# session tokens; appends and copies are atomic, so no lock): scrubbed from
# every later error, whichever call a server echoes them in.
_SEEN: deque[str] = deque(maxlen=_REMEMBERED_SECRETS)


class _Secret(str):
    """A credential: its text everywhere but in ``repr()``, which is ``***``, so
    that no frame, dict or list holding it shows it (Sentry records by repr)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return _REDACTED


def _masked(head: str, fields: Mapping[str, str], body: bytes | None) -> memoryview:
    """A request's bytes, built here, as a view whose repr shows none of them."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return memoryview((head + lines + "\r\n").encode("latin-1") + (body or b""))


class _SecretBytes(bytes):
    """A request's body, which holds credentials: ``repr()`` shows none."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "b'***'"


# What ``_hide`` puts where nesting runs too deep (json then refuses the body).
_TOO_DEEP = object()


def _hide(
    value: Any, found: list[str] | None = None, hidden: bool = False, depth: int = 0
) -> Any:
    """A copy of a JSON-like value: mappings as dicts, sequences as lists, every
    string under a secret-named key a ``_Secret`` (also collected in ``found``).
    Never raises: it runs first, so no frame that checks or fails holds a plain
    secret; nesting deeper than ``_MAX_JSON_DEPTH`` (or a cycle) is cut."""
    if depth > _MAX_JSON_DEPTH:
        return _TOO_DEEP
    if isinstance(value, str):
        if hidden or isinstance(value, _Secret):
            value = _Secret(value)
            if found is not None:
                found.append(value)
        return value
    if isinstance(value, Mapping):
        return {
            k: _hide(v, found, hidden or bool(_SECRET_NAME.search(str(k))), depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_hide(item, found, hidden, depth + 1) for item in value]
    return value


def _hidden(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as json.loads reads an answer: secret-named strings hidden."""
    return {
        k: _Secret(v) if isinstance(v, str) and _SECRET_NAME.search(k) else v
        for k, v in pairs
    }


def _not_json(value: object) -> NoReturn:
    """json's ``default``: say what cannot be sent (never its value)."""
    what = (
        f"nesting deeper than {_MAX_JSON_DEPTH}"
        if value is _TOO_DEEP
        else type(value).__name__
    )
    raise TypeError(f"{what} is not JSON")


def _known_secrets(extra: Sequence[str | None]) -> list[str]:
    """The secrets to scrub, longest first: ``extra`` and every remembered token."""
    found = {s for s in (*extra, *tuple(_SEEN)) if s and len(s) >= _MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def _redact(
    text: str, secrets: Sequence[str], *, limit: int = _MAX_DETAIL_CHARS
) -> str:
    """One clean line: bounded, no control characters, URL credentials or
    queries, and no known secret (nor a secret's start cut off at the end)."""
    text = _SURROGATE.sub("?", _CONTROL.sub(" ", text[:MAX_ERROR_BODY_BYTES]))
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
        # A body cut at its cap may end with the first part of a secret.
        for cut in range(min(len(secret), len(text)), _MIN_SECRET_CHARS - 1, -1):
            if text.endswith(secret[:cut]):
                text = text[:-cut] + _REDACTED
                break
    text = " ".join(_QUERY.sub("?***", _USERINFO.sub("//***@", text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact_json(
    value: Any, secrets: Sequence[str], hidden: bool = False, depth: int = 0
) -> Any:
    """A copy of a JSON value: credentials (by name or value) as ``***``, keys
    and strings cleaned, nesting cut at ``_MAX_JSON_DEPTH``."""
    if depth > _MAX_JSON_DEPTH:
        return "..."
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = _redact(key, secrets, limit=MAX_ERROR_BODY_BYTES)
            out[name] = _redact_json(
                item, secrets, hidden or bool(_SECRET_NAME.search(key)), depth + 1
            )
        return out
    if isinstance(value, list):
        return [_redact_json(item, secrets, hidden, depth + 1) for item in value]
    if isinstance(value, str):
        return (
            _REDACTED if hidden else _redact(value, secrets, limit=MAX_ERROR_BODY_BYTES)
        )
    return value


# Command line (the core above never refers to anything below)
# --------------------------------------------------------------------------- #

_MINTED = "<minted at run time>"
_KEY_VARIABLES = ("AVATURN_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY")
_CLI_HELP = """environment:
  AVATURN_API_KEY    Avaturn API key (needed to send)
  AVATURN_BASE_URL   API host (default https://api.avaturn.live)
  OPENAI_API_KEY     with --openai; OPENAI_BASE_URL: its API root
  CARTESIA_API_KEY   with --cartesia-agent; CARTESIA_BASE_URL: its API root

examples:
  avaturn-session create --dry-run --openai --voice marin
  avaturn-session create --openai --instructions 'Be brief.' --user-absent-timeout 30
  avaturn-session create --cartesia-agent agent_123
  avaturn-session create --engine '{"type": "text-echo", "tts": {"engine": "elevenlabs", "voice_id": "v1"}}'
  avaturn-session say 3f2a... 'Welcome back!'
  avaturn-session terminate 3f2a..."""
# create's options: flag, then argparse's keywords (the first four exclude each other).
_CLI_CREATE = (
    ("--engine", {"metavar": "JSON", "help": "any engine config as JSON"}),
    ("--openai", {"action": "store_true", "help": "mint an OpenAI client secret"}),
    ("--cartesia-agent", {"metavar": "ID", "help": "mint a Cartesia token for it"}),
    ("--text-echo-voice", {"metavar": "ID", "help": "text-echo, ElevenLabs voice"}),
    ("--model", {"help": "with --openai: Realtime model (default gpt-realtime)"}),
    ("--voice", {"help": "with --openai: voice, e.g. marin or cedar"}),
    ("--instructions", {"metavar": "TEXT", "help": "with --openai: instructions"}),
    ("--avatar-id", {"metavar": "ID"}),
    ("--background", {"choices": _BACKGROUNDS}),
    ("--render-model", {"metavar": "NAME"}),
    ("--user-absent-timeout", {"metavar": "S", "type": int, "help": "seconds, >= 10"}),
    ("--max-duration", {"metavar": "S", "type": int, "help": "seconds, 60..86400"}),
    ("--dry-run", {"action": "store_true", "help": "print the request, send nothing"}),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``avaturn-session`` command line; returns the exit status.

    stdout carries one JSON object; an error is one line on stderr. Exit 0 on
    success, 2 for usage and configuration errors, 1 for everything else.
    """
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    dry_run = args.command == "create" and args.dry_run
    try:
        with contextlib.nullcontext() if dry_run else AvaturnClient() as client:
            result = args.run(client, args)
    except Exception as exc:  # noqa: BLE001 - one line on stderr, never a traceback
        text = _redact(f"{type(exc).__name__}: {exc}", _known_secrets(_env_keys()))
        print("avaturn-session: error: " + text, file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1
    print(json.dumps(result))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    import argparse  # only when the CLI runs

    class Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line on stderr like every other error."""

        def error(self, message: str) -> NoReturn:
            message = _CONTROL.sub(" ", message)
            print(
                f"avaturn-session: error: usage: {message} (see --help)",
                file=sys.stderr,
            )
            raise SystemExit(2)

    raw, epilog = argparse.RawDescriptionHelpFormatter, _CLI_HELP
    parser = Parser(
        prog="avaturn-session",
        description="Create, drive and end Avaturn.Live avatar sessions. "
        "stdout: one JSON object; errors: one line on stderr.",
        formatter_class=raw,
        epilog=epilog,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create, say_cmd, terminate = (
        commands.add_parser(name, help=text, formatter_class=raw, epilog=epilog)
        for name, text in (
            ("create", "create a session; prints session_id, token, api_host"),
            ("say", "queue text for the avatar to say; prints task_id"),
            ("terminate", "end a session; prints terminated"),
        )
    )
    source = create.add_mutually_exclusive_group()
    for n, (flag, options) in enumerate(_CLI_CREATE):
        (source if n < 4 else create).add_argument(flag, **options)  # type: ignore[arg-type]
    create.set_defaults(run=_cli_create)
    for command in (say_cmd, terminate):
        command.add_argument("session_id", metavar="SESSION_ID")
    say_cmd.add_argument("text", metavar="TEXT")
    say_cmd.set_defaults(
        run=lambda client, a: {"task_id": client.say(a.session_id, a.text)}
    )
    terminate.set_defaults(
        run=lambda client, a: {"terminated": client.terminate_session(a.session_id)}
    )
    return parser


def _cli_create(
    client: AvaturnClient | None, args: argparse.Namespace
) -> dict[str, Any]:
    if not args.openai and (args.model or args.voice or args.instructions):
        raise ConfigurationError("--model, --voice and --instructions go with --openai")
    engine: Any = None
    if args.engine is not None:
        try:
            engine = json.loads(args.engine)
        except ValueError:
            raise ConfigurationError("--engine is not valid JSON") from None
    elif args.openai:
        engine = openai_realtime_engine(_MINTED)
    elif args.cartesia_agent is not None:
        engine = cartesia_engine(_MINTED, args.cartesia_agent)
    elif args.text_echo_voice is not None:
        engine = text_echo_engine(args.text_echo_voice)
    realtime: dict[str, Any] = {"model": args.model or "gpt-realtime"}
    if args.instructions:
        realtime["instructions"] = args.instructions
    if args.voice:
        realtime["audio"] = {"output": {"voice": args.voice}}
    names = [n for n in _CreateOptions.__annotations__ if hasattr(args, n)]
    options: Any = {name: getattr(args, name) for name in names}
    # Validate every option before any credential is minted or request is sent.
    body = _Payload(_build_create_body(_hide(engine), options)).body
    if client is None:  # --dry-run: the request, secrets masked, minted ones named
        root = _check_base_url(os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL)
        shown = _redact_json(body, _known_secrets(_env_keys()))
        for name in ("client_secret", "access_token"):
            if engine is not None and engine.get(name) == _MINTED:
                shown["conversation_engine"][name] = _MINTED
        request = {"method": "POST", "url": root + _PATH_SESSIONS, "json": shown}
        if args.openai:  # what the secret would be minted for
            request["mint"] = {"openai": {"type": "realtime", **realtime}}
        return request
    if args.openai:
        engine = openai_realtime_engine(mint_openai_client_secret(realtime))
    elif args.cartesia_agent is not None:
        engine = cartesia_engine(mint_cartesia_access_token(), args.cartesia_agent)
    return client.create_session(engine, **options)._asdict()


def _env_keys() -> list[str | None]:
    return [os.environ.get(name) for name in _KEY_VARIABLES]


if __name__ == "__main__":
    sys.exit(main())
