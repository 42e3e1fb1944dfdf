"""avaturn-session: run the whole life of an Avaturn.Live avatar session, blocking.

Mint the conversation engine's short-lived credential, create the session, hand
its token to the browser's Web SDK, push text for the avatar to say, terminate.
One module on ``requests``; ``openai`` is an optional extra, imported lazily.

    import avaturn_session as av

    secret = av.mint_openai_client_secret({"model": "gpt-realtime"})
    engine = av.openai_realtime_engine(secret)
    with av.session(engine, user_absent_timeout=30) as s:
        options = s.web_sdk_options()  # {"sessionToken": ..., "apiHost": ...}
        ...  # hand `options` to the browser's `new AvaturnHead(el, options)`
    # leaving the block terminated the session, whatever happened inside

    with av.session(av.text_echo_engine("voice_id")) as s:
        av.say(s.session_id, "Hello!")  # text-echo sessions speak pushed text

Keys come from AVATURN_API_KEY, OPENAI_API_KEY and CARTESIA_API_KEY.
"""

from __future__ import annotations

import contextlib
import functools
import http
import http.client
import http.cookiejar
import json
import logging
import math
import os
import random
import re
import socket
import sys
import threading
import time
import types
import urllib.parse
import weakref
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import requests
import requests.adapters
import requests.auth
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.poolmanager
import urllib3.response

if TYPE_CHECKING:  # only the type checker needs these (Self, Unpack: 3.11+)
    import argparse
    from typing import Self

    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_POOL_MAXSIZE",
    "DEFAULT_TIMEOUT",
    "INITIAL_RETRY_DELAY",
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
]

__version__ = "0.2.0"

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

#: Production Avaturn.Live API; also the Web SDK's default ``apiHost``.
DEFAULT_BASE_URL = "https://api.avaturn.live"

#: The browser Web SDK, pinned: the one place its version is set. Its
#: ``dist/main.js`` is a self-contained ES module; serve your own copy by
#: passing ``sdk_url=`` (or ``AVATURN_SDK_URL`` in the examples).
WEB_SDK_URL = "https://cdn.jsdelivr.net/npm/@avaturn-live/web-sdk@0.3.7/dist/main.js"

#: Seconds to wait for a connection, then for each read of the response.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)

#: Total seconds one public call may take: every attempt, every wait between
#: attempts, the response headers and the body. A slow server never holds a
#: worker longer than this.
DEFAULT_DEADLINE = 60.0

#: Extra attempts after the first, for the failures that are safe to repeat.
DEFAULT_MAX_RETRIES = 2

#: Backoff before the first retry, in seconds; it doubles for each further one.
INITIAL_RETRY_DELAY = 0.5

#: Upper bound of the exponential backoff, in seconds.
MAX_RETRY_DELAY = 8.0

#: A ``Retry-After`` longer than this (seconds) is not waited for: the error is
#: raised at once, so a web request is never blocked for minutes.
MAX_RETRY_AFTER = 60.0

#: Connections kept per host: one shared client serves this many threads at
#: once without urllib3 discarding connections (requests' own default is 10).
DEFAULT_POOL_MAXSIZE = 32

#: Largest successful (2xx) answer read, in decoded bytes; a longer one is an
#: ``APIResponseError``. The API's answers are a few hundred bytes.
MAX_RESPONSE_BYTES = 1024 * 1024

#: Largest error (4xx/5xx) body read, in decoded bytes; the rest is dropped.
MAX_ERROR_BODY_BYTES = 64 * 1024

# Pooled ``openai.OpenAI`` clients kept per process (one per key and base URL);
# the least recently used is dropped past this, so many keys never grow memory.
_OPENAI_POOL_SIZE = 8

# Random part of each backoff delay: the delay is scaled by 1 - JITTER * U[0, 1).
_JITTER = 0.25

# Largest integer option accepted where the API sets no bound (a bigger one
# is a mistake, and one with thousands of digits cannot even be formatted).
_MAX_INT = 2**31 - 1

# Longest timeout or deadline accepted, in seconds (larger ones overflow the
# socket layer and never make sense for a web request).
_MAX_SECONDS = 24 * 3600.0

# Bytes asked of the socket per read of a response body.
_READ_CHUNK = 16 * 1024

# Create-session limits from the API reference, in seconds.
_MIN_USER_ABSENT_TIMEOUT = 10
_MIN_MAX_DURATION = 60
_MAX_MAX_DURATION = 86400
_BACKGROUNDS = ("default", "transparent")

# OpenAI Realtime client secrets live 10 s to 2 h.
_OPENAI_MIN_EXPIRES_IN = 10
_OPENAI_MAX_EXPIRES_IN = 7200
_OPENAI_DEFAULT_SESSION: dict[str, Any] = {"type": "realtime", "model": "gpt-realtime"}

# Cartesia access tokens: host, API version header, lifetime limits.
_CARTESIA_BASE_URL = "https://api.cartesia.ai"
_CARTESIA_VERSION = "2025-04-16"
_CARTESIA_MAX_EXPIRES_IN = 3600

_PATH_SESSIONS = "/api/v1/sessions"
_USER_AGENT = f"avaturn-session/{__version__}"

# Deepest JSON we send or look into; deeper input is refused, deeper answers cut.
_MAX_JSON_DEPTH = 32

# Longest server detail quoted in an exception message, in characters.
_MAX_DETAIL_CHARS = 500

# Session tokens this process remembers so that later error texts can be
# scrubbed of them, whichever client sees the error.
_REMEMBERED_TOKENS = 256

_log = logging.getLogger("avaturn_session")

# --------------------------------------------------------------------------- #
# Exceptions
# --------------------------------------------------------------------------- #


class AvaturnError(Exception):
    """Root of every error this module raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors defeat Exception's default pickling: rebuild
        # from the message and the attributes, so celery, multiprocessing and
        # ProcessPoolExecutor deliver the same class with the same fields.
        return (_restore_error, (type(self), self.args, self.__dict__))


class ConfigurationError(AvaturnError, ValueError):
    """Bad input or setup, caught before any request was sent."""


class CredentialError(AvaturnError):
    """Minting the conversation engine's credential failed."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class APIConnectionError(AvaturnError):
    """No HTTP response arrived: refused, reset, DNS failure, cut-off body."""

    def __init__(
        self, message: str, *, method: str, path: str, request_sent: bool
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        # False only when the request certainly never reached the server.
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """A connect, a read or the whole call's deadline timed out."""


class APIResponseError(AvaturnError):
    """A 2xx or 3xx answer that cannot be used: not JSON, a field missing, a redirect."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        method: str,
        path: str,
        session_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.path = path
        # Set when the server created a session that may still be running.
        self.session_id = session_id


class APIStatusError(AvaturnError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        *,
        status_code: int,
        detail: Any,
        request_id: str | None,
        method: str,
        path: str,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(_status_message(status_code, request_id, detail))
        self.status_code = status_code
        self.detail = detail
        self.request_id = request_id
        self.method = method
        self.path = path
        self.body = body
        # Seconds the server asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after
        # FastAPI validation items ({"loc", "msg", "type", ...}); empty otherwise.
        self.errors: list[Any] = list(detail) if isinstance(detail, list) else []


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


def _restore_error(
    cls: type[AvaturnError], args: tuple[Any, ...], state: dict[str, Any]
) -> AvaturnError:
    """Unpickle an error without calling its keyword-only ``__init__``."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _status_message(status: int, request_id: str | None, detail: Any) -> str:
    """``422 Unprocessable Entity (request req_1): loc: msg``."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    text = f"{status} {phrase}"
    if request_id:
        text += f" (request {request_id})"
    rendered = _render_detail(detail)
    return f"{text}: {rendered}" if rendered else text


# --------------------------------------------------------------------------- #
# Data classes
# --------------------------------------------------------------------------- #


class AvaturnSession:
    """A created session: its id, the browser's token and the API host it lives on.

    Immutable, compared and hashed by value. ``token`` is a credential for the
    browser only: it is left out of ``repr()``.
    """

    __slots__ = ("api_host", "session_id", "token")
    __match_args__ = ("session_id", "token", "api_host")

    session_id: str
    token: str
    api_host: str

    def __init__(self, session_id: str, token: str, api_host: str) -> None:
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "api_host", api_host)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AvaturnSession is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AvaturnSession is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not AvaturnSession:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        return (AvaturnSession, self._fields())

    def __repr__(self) -> str:
        session_id = getattr(self, "session_id", None)
        api_host = getattr(self, "api_host", None)
        return f"AvaturnSession(session_id={session_id!r}, api_host={api_host!r})"

    def _fields(self) -> tuple[str, str, str]:
        return (self.session_id, self.token, self.api_host)

    def web_sdk_options(self) -> dict[str, str]:
        """Options for ``new AvaturnHead(element, options)`` in the Web SDK."""
        return {"sessionToken": self.token, "apiHost": self.api_host}

    def web_sdk_html(
        self,
        *,
        sdk_url: str | None = None,
        audio: bool = False,
        width: str = "100%",
        height: str = "480px",
    ) -> str:
        """A complete HTML page that shows this session's avatar with the Web SDK.

        For a notebook (see ``_repr_html_``) or a quick Flask/Django response.
        ``sdk_url`` defaults to ``AVATURN_SDK_URL``, then the pinned
        ``WEB_SDK_URL``. ``audio=True`` sends the visitor's microphone; ``width`` and ``height``
        are CSS lengths of the avatar. Token and host go in as escaped JSON, so
        no id or token can break out of the script. The page shows a message
        when the SDK cannot load or connect, and disposes the avatar when it
        goes away; ending the session stays the backend's job.
        """
        sdk_url = sdk_url or os.environ.get("AVATURN_SDK_URL") or WEB_SDK_URL
        _split_url(sdk_url, "sdk_url")
        if not sdk_url.startswith(("https://", "http://")):
            raise ConfigurationError("sdk_url must be an http(s) URL")
        if not isinstance(audio, bool):
            raise ConfigurationError("audio must be True or False")
        size = {"width": width, "height": height}
        for name, value in size.items():
            if not isinstance(value, str) or not _CSS_LENGTH.fullmatch(value):
                raise ConfigurationError(f"{name} must be a CSS length like '480px'")
        config = {
            "sdkUrl": sdk_url,
            "audio": audio,
            **self.web_sdk_options(),
        }
        return _WEB_SDK_PAGE.format(
            width=width, height=height, config=_script_json(config)
        )

    def _repr_html_(self) -> str:
        """The live avatar in a Jupyter cell: ``web_sdk_html`` in an iframe."""
        import html

        page = html.escape(self.web_sdk_html(height="440px"), quote=True)
        return (
            f'<iframe srcdoc="{page}" allow="microphone; autoplay" '
            'style="width: 100%; height: 480px; border: 0"></iframe>'
        )


# A CSS length for the notebook view: a number and a unit, or a percentage.
_CSS_LENGTH = re.compile(r"\d{1,5}(\.\d{1,3})?(px|%|em|rem|vh|vw)")

# The page of ``AvaturnSession.web_sdk_html``; ``config`` is escaped JSON.
_WEB_SDK_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Avaturn avatar</title>
<style>
  html, body {{ margin: 0; font: 14px system-ui, sans-serif; }}
  #avatar {{ width: {width}; height: {height}; background: #111; }}
  #status {{ margin: 6px 0; color: #555; }}
  #status.error {{ color: #b00020; }}
</style>
</head>
<body>
<div id="avatar"></div>
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
      sessionToken: config.sessionToken,
      apiHost: config.apiHost,
      audioSource: config.audio,
    }});
    show("Connecting to the avatar...");
    await head.init();
    show("Connected.");
  }} catch (error) {{
    show(head === null
      ? "Could not load the Avaturn Web SDK from " + config.sdkUrl + "."
      : "Could not connect to the avatar: " + (error && error.message || error), true);
  }}
  window.addEventListener("pagehide", () => head && head.dispose());
</script>
</body>
</html>
"""


def _script_json(value: object) -> str:
    """JSON safe inside a ``<script>``: no ``</script>``, ``<!--`` or line separator."""
    text = json.dumps(value)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


class _CreateOptions(TypedDict, total=False):
    """The create-session options after ``engine``: their one typed home.

    ``AvaturnClient.create_session`` spells them out; every function that
    forwards them takes ``**options: Unpack[_CreateOptions]``.
    """

    avatar_id: str | None
    background: str | None
    render_model: str | None
    user_absent_timeout: int | None
    max_duration: int | None
    extra: Mapping[str, Any] | None


# --------------------------------------------------------------------------- #
# Engine helpers
# --------------------------------------------------------------------------- #


def openai_realtime_engine(client_secret: str) -> dict[str, Any]:
    """Engine config for an OpenAI Realtime session bound to a client secret (``ek_...``)."""
    _check_text(client_secret, "client_secret")
    return {"type": "openai-realtime", "client_secret": client_secret}


def cartesia_engine(access_token: str, agent_id: str) -> dict[str, Any]:
    """Engine config for a Cartesia Line agent, with a freshly minted access token."""
    _check_text(access_token, "access_token")
    _check_text(agent_id, "agent_id")
    return {"type": "cartesia", "access_token": access_token, "agent_id": agent_id}


def text_echo_engine(voice_id: str) -> dict[str, Any]:
    """Engine config for the legacy text-echo type: an ElevenLabs voice says pushed text."""
    _check_text(voice_id, "voice_id")
    return {"type": "text-echo", "tts": {"engine": "elevenlabs", "voice_id": voice_id}}


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
    engine: dict[str, Any] = {"type": "external", "url": url}
    if headers is not None:
        _check_headers(headers)
        engine["headers"] = dict(headers)
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
    openai_client: Any = None,
) -> str:
    """Mint a short-lived OpenAI Realtime client secret (``ek_...``) for one session.

    ``session`` is the Realtime session config (model, instructions, voice under
    ``audio.output.voice``, tools, ...); default ``{"type": "realtime", "model":
    "gpt-realtime"}``; ``"type": "realtime"`` is added when missing (on a copy).
    ``expires_in`` is the lifetime in seconds, 10..7200. ``openai_client`` is a
    configured ``openai.OpenAI``, used as is and never closed; otherwise a
    pooled one is used: one per key and ``OPENAI_BASE_URL`` per process, built
    on first use with this module's timeouts, kept open across calls (see
    ``close_shared_clients``) and never shared with a forked child. Raises
    ``ConfigurationError`` for bad input, a missing key or a missing ``openai``
    package, and ``CredentialError`` when minting fails.
    """
    _check_int(expires_in, "expires_in", _OPENAI_MIN_EXPIRES_IN, _OPENAI_MAX_EXPIRES_IN)
    if session is None:
        config = dict(_OPENAI_DEFAULT_SESSION)
    elif isinstance(session, Mapping):
        config = {"type": "realtime", **session}
    else:
        raise ConfigurationError(
            "session must be a mapping (the Realtime session config)"
        )
    _check_json(config, "session")
    client = _OPENAI_POOL.get(api_key) if openai_client is None else openai_client
    failure: str | None = None
    value: object = None
    try:
        minted = client.realtime.client_secrets.create(
            expires_after={"seconds": expires_in, "anchor": "created_at"},
            session=config,
        )
        value = minted.value
    except Exception as exc:  # noqa: BLE001 - any SDK failure is a CredentialError
        # Keep the reason, not the exception: its frames hold the request and
        # its Authorization header, which a traceback capturer would record.
        failure = _sdk_failure(exc, api_key, client)
    if failure is not None:
        raise CredentialError(
            f"openai: could not mint a Realtime client secret: {failure}",
            provider="openai",
        )
    if not isinstance(value, str) or not value:
        raise CredentialError(
            "openai: the response carried no client secret value", provider="openai"
        )
    return value


def mint_cartesia_access_token(
    *,
    api_key: str | None = None,
    expires_in: int = 300,
    base_url: str | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> str:
    """Mint a short-lived Cartesia access token with the agent grant.

    The key comes from ``api_key`` or ``CARTESIA_API_KEY``; ``base_url`` from the
    argument, ``CARTESIA_BASE_URL`` or ``https://api.cartesia.ai``. ``expires_in``
    is in seconds, 1..3600. One POST, never retried, sent through one pooled
    session shared by every mint of the process (cookies refused, replaced in
    a forked child); ``timeout`` and ``deadline`` (total seconds) as in
    ``AvaturnClient``. Raises
    ``ConfigurationError`` for bad input and ``CredentialError``
    (``provider="cartesia"``) when minting fails.
    """
    _check_int(expires_in, "expires_in", 1, _CARTESIA_MAX_EXPIRES_IN)
    transport = _Transport(
        auth=_BearerAuth(
            _check_key(_resolve_key(api_key, "CARTESIA_API_KEY", "a Cartesia API key"))
        ),
        base_url=_check_base_url(
            base_url or os.environ.get("CARTESIA_BASE_URL") or _CARTESIA_BASE_URL
        ),
        timeout=_check_timeout(timeout),
        deadline=_check_seconds(deadline, "deadline"),
        max_retries=0,
        http=_shared_http(),
        headers={"Cartesia-Version": _CARTESIA_VERSION},
    )
    body = {"grants": {"agent": True}, "expires_in": expires_in}
    try:
        outcome, _ = transport.request("POST", "/access-token", body)
        token: str | AvaturnError = _string_field(
            _json_object(outcome, "POST", "/access-token"),
            "token",
            outcome,
            "POST",
            "/access-token",
        )
    except AvaturnError as exc:
        token = exc
    if isinstance(token, AvaturnError):
        # Chained to our own typed, redacted error (never a transport exception).
        raise CredentialError(
            f"cartesia: could not mint an access token: {token}", provider="cartesia"
        ) from token
    return token


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #


class AvaturnClient:
    """A thread-safe, fork-safe client for the Avaturn.Live session API.

    ``api_key`` defaults to ``AVATURN_API_KEY``; ``base_url`` to
    ``AVATURN_BASE_URL``, then ``DEFAULT_BASE_URL`` (``https://`` only, but
    ``http://`` is allowed for loopback hosts, which never go through a proxy).
    ``timeout`` is in seconds, a float or a ``(connect, read)`` pair, never
    ``None``; ``deadline`` bounds each public call in total (seconds, every
    attempt and wait included). ``max_retries`` extra attempts are made only
    where repeating cannot double-bill (see ``_should_retry``). ``http`` is a
    ``requests.Session`` to send through; it is never modified, never closed,
    and not replaced after ``os.fork()`` (make one per process). Share one
    instance across all threads of a web app.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http: requests.Session | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        auth = _BearerAuth(
            _check_key(_resolve_key(api_key, "AVATURN_API_KEY", "an Avaturn API key"))
        )
        self.base_url = _check_base_url(
            base_url or os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL
        )
        self.timeout = _check_timeout(timeout)
        self.deadline = _check_seconds(deadline, "deadline")
        self.max_retries = _check_int(max_retries, "max_retries", 0, None)
        if http is not None and not isinstance(http, requests.Session):
            raise ConfigurationError("http must be a requests.Session")
        self._transport = _Transport(
            auth=auth,
            base_url=self.base_url,
            timeout=self.timeout,
            deadline=self.deadline,
            max_retries=self.max_retries,
            http=http,
        )

    def __repr__(self) -> str:
        return f"AvaturnClient(base_url={getattr(self, 'base_url', None)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (only those of a session this client created)."""
        self._transport.close()

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
    ) -> AvaturnSession:
        """Create a session; returns its id, the browser token and the API host.

        Only the options that were set are sent, so the server's defaults apply.
        ``engine`` is any engine mapping (see the ``*_engine`` helpers);
        ``user_absent_timeout`` (>= 10) and ``max_duration`` (60..86400) are in
        seconds; ``extra`` holds further top-level fields sent as they are.
        Raises ``ConfigurationError`` before sending anything for bad input. Never
        retried once the request may have reached the server (a second create
        would start a second billed session).
        """
        body = _build_create_body(
            engine,
            {
                "avatar_id": avatar_id,
                "background": background,
                "render_model": render_model,
                "user_absent_timeout": user_absent_timeout,
                "max_duration": max_duration,
                "extra": extra,
            },
        )
        outcome, _ = self._transport.request("POST", _PATH_SESSIONS, body)
        payload = _json_object(outcome, "POST", _PATH_SESSIONS)
        session_id = _string_field(
            payload, "session_id", outcome, "POST", _PATH_SESSIONS
        )
        token = payload.get("token")
        if not isinstance(token, str) or not token:
            # The server made a session we cannot use: end it rather than leak it.
            left_running = None if self._terminate_quietly(session_id) else session_id
            raise APIResponseError(
                f"{outcome.status} response to POST {_PATH_SESSIONS} has no 'token' string",
                status_code=outcome.status,
                method="POST",
                path=_PATH_SESSIONS,
                session_id=left_running,
            )
        _REDACTOR.remember(token)
        return AvaturnSession(
            session_id=session_id, token=token, api_host=self.base_url
        )

    def say(self, session_id: str, text: str) -> str:
        """Queue ``text`` for the avatar to speak (text-echo sessions); returns the task id.

        Never retried once the request may have reached the server: a second
        attempt could make the avatar say it twice.
        """
        path = _session_path(session_id) + "/tasks"
        _check_text(text, "text")
        if not text.strip():
            raise ConfigurationError("text must not be blank")
        outcome, _ = self._transport.request("POST", path, {"text": text})
        return _string_field(
            _json_object(outcome, "POST", path), "task_id", outcome, "POST", path
        )

    def terminate_session(self, session_id: str) -> bool:
        """End a session; ``True`` if this call ended it, ``False`` if it was already gone.

        Safe to call twice and from cleanup code: a 404 or 410 means gone. DELETE
        is idempotent, so timeouts, resets and 500/502/503/504 are retried; a
        404 after an attempt that may have reached the server counts as ended
        by this call (that attempt most likely did the work).
        """
        path = _session_path(session_id)
        outcome, maybe_done = self._transport.request(
            "DELETE", path, None, gone_ok=True, body_needed=False
        )
        if outcome.status in _GONE:
            return maybe_done
        return True

    @contextlib.contextmanager
    def session(
        self,
        engine: Mapping[str, Any] | None = None,
        **options: Unpack[_CreateOptions],
    ) -> Iterator[AvaturnSession]:
        """Create a session for a ``with`` block and terminate it on leaving, whatever happens.

        Takes ``create_session``'s parameters. If terminating fails while the
        block's own exception propagates, a WARNING is logged and the block's
        exception wins; if the block succeeded, the terminate error is raised
        (a silently leaked session costs money).
        """
        created = self.create_session(engine, **options)
        try:
            yield created
        except BaseException:
            self._terminate_quietly(
                created.session_id, "after an error in the with-block"
            )
            raise
        self.terminate_session(created.session_id)

    # -- internals ---------------------------------------------------------- #

    def _terminate_quietly(
        self, session_id: str, why: str = "unusable session"
    ) -> bool:
        """Terminate; on failure log a WARNING and return False instead of raising."""
        try:
            self.terminate_session(session_id)
        except AvaturnError as exc:
            _log.warning(
                "could not terminate session %s (%s): %s", session_id, why, exc
            )
            return False
        return True


# --------------------------------------------------------------------------- #
# Module-level functions (one shared client, built from the environment)
# --------------------------------------------------------------------------- #

_default_client: AvaturnClient | None = None
_default_lock = threading.Lock()


def create_session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> AvaturnSession:
    """``AvaturnClient.create_session`` on the shared client built from the environment."""
    return _client().create_session(engine, **options)


def say(session_id: str, text: str) -> str:
    """``AvaturnClient.say`` on the shared client built from the environment."""
    return _client().say(session_id, text)


def terminate_session(session_id: str) -> bool:
    """``AvaturnClient.terminate_session`` on the shared client built from the environment."""
    return _client().terminate_session(session_id)


def session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> contextlib.AbstractContextManager[AvaturnSession]:
    """``AvaturnClient.session`` on the shared client built from the environment."""
    return _client().session(engine, **options)


def close_shared_clients() -> None:
    """Release the connections of every client the module shares, e.g. at app shutdown.

    That is the client behind the module-level functions, the pooled
    ``openai.OpenAI`` clients of ``mint_openai_client_secret`` and the session
    of ``mint_cartesia_access_token``. Each is built again on next use. Call it
    when no other thread is using them.
    """
    global _default_client, _shared_http_session
    with _default_lock:
        client, _default_client = _default_client, None
        http_session, _shared_http_session = _shared_http_session, None
    if client is not None:
        client.close()
    if http_session is not None:
        http_session.close()
    _OPENAI_POOL.close()


def _client() -> AvaturnClient:
    """The shared client, built once from the environment, even under racing threads."""
    global _default_client
    client = _default_client
    if client is None:
        with _default_lock:
            if _default_client is None:
                _default_client = AvaturnClient()
            client = _default_client
    return client


def _shown_as_create_session(returns: str, *, bound: bool) -> Callable[..., Any]:
    """A stand-in, never called, that ``inspect.signature`` and ``help()`` read
    through ``__wrapped__``: ``AvaturnClient.create_session``'s parameters
    spelled out, with another return annotation.

    The forwarders take ``**options: Unpack[_CreateOptions]``, which type
    checkers read precisely; this keeps their runtime signature as explicit,
    without importing ``inspect`` (a tenth of this module's import time).
    """
    proto = AvaturnClient.create_session
    stand_in = types.FunctionType(
        proto.__code__, proto.__globals__, proto.__name__, proto.__defaults__
    )
    stand_in.__kwdefaults__ = proto.__kwdefaults__
    stand_in.__annotations__ = {**proto.__annotations__, "return": returns}
    # A bound method: inspect drops ``self`` for the module-level functions.
    return stand_in.__get__(AvaturnClient) if bound else stand_in


AvaturnClient.session.__wrapped__.__wrapped__ = _shown_as_create_session(  # type: ignore[attr-defined]
    "Iterator[AvaturnSession]", bound=False
)
create_session.__wrapped__ = _shown_as_create_session(  # type: ignore[attr-defined]
    "AvaturnSession", bound=True
)
session.__wrapped__ = _shown_as_create_session(  # type: ignore[attr-defined]
    "contextlib.AbstractContextManager[AvaturnSession]", bound=True
)


# --------------------------------------------------------------------------- #
# Transport: one attempt returns the raw outcome; the loop decides
# --------------------------------------------------------------------------- #

_GONE = (404, 410)
# Per request: proxies from the environment are not used (loopback hosts).
_NO_PROXIES: dict[str, Any] = {"http": None, "https": None, "all": None}
# Exceptions one attempt turns into a transport failure.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


class _Failure:
    """Why an attempt got no usable HTTP response (a reason, never the exception)."""

    __slots__ = ("reason", "sent", "timeout")

    def __init__(self, reason: str, *, sent: bool, timeout: bool) -> None:
        self.reason = reason
        self.sent = sent
        self.timeout = timeout

    def __repr__(self) -> str:
        sent, timeout = getattr(self, "sent", None), getattr(self, "timeout", None)
        return f"_Failure(sent={sent}, timeout={timeout})"


class _Outcome:
    """The raw result of one attempt: a status with headers and a bounded body,
    or a transport failure (``status`` 0). Its repr shows no content."""

    __slots__ = ("body", "failure", "headers", "problem", "status")

    def __init__(
        self,
        status: int = 0,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        failure: _Failure | None = None,
        problem: str | None = None,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.body = body
        self.failure = failure
        # Why a 2xx body is unusable (too large, undecodable), if it is.
        self.problem = problem

    def __repr__(self) -> str:
        size = len(getattr(self, "body", b""))
        return f"<_Outcome status={getattr(self, 'status', None)} body={size} bytes>"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.problem is None

    def label(self) -> str:
        """What happened, for a log line: a status, or the failure's kind."""
        if self.failure is not None:
            return "timeout" if self.failure.timeout else "connection error"
        return str(self.status)


class _DeadlineExceeded(Exception):
    """Internal: the call's deadline passed while a body was being read."""


class _Transport:
    """Sends requests to one host with the retry rules, the deadline and the caps.

    Shared by ``AvaturnClient`` and Cartesia minting. ``http=None`` means an
    own pooled session, closed by ``close()`` and replaced in a forked child.
    """

    def __init__(
        self,
        *,
        auth: _BearerAuth,
        base_url: str,
        timeout: _Timeout,
        deadline: float,
        max_retries: int,
        http: requests.Session | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.auth = auth
        self.base_url = base_url
        self.timeout = _timeout_pair(timeout)
        self.deadline = deadline
        self.max_retries = max_retries
        self.owns_http = http is None
        self.http = http if http is not None else _new_http_session()
        # A proxy from the environment would see a loopback request in clear.
        self.bypass_proxies = _is_loopback(urllib.parse.urlsplit(base_url).hostname)
        common = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        # identity: the body caps count what the server sends, not what it inflates to.
        common["Accept-Encoding"] = "identity"
        common.update(headers or {})
        self.headers_plain = common
        self.headers_json = {**common, "Content-Type": "application/json"}
        if self.owns_http:
            _LIVE_TRANSPORTS.add(self)

    def __repr__(self) -> str:
        return f"_Transport(base_url={getattr(self, 'base_url', None)!r})"

    def close(self) -> None:
        if self.owns_http:
            self.http.close()

    def reset_after_fork(self) -> None:
        """In a forked child: a pool of its own, never the parent's connections."""
        if self.owns_http:
            self.http = _new_http_session()

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        gone_ok: bool = False,
        body_needed: bool = True,
    ) -> tuple[_Outcome, bool]:
        """Send with the retry rules; returns the usable outcome and whether an
        earlier attempt may have done the work. Raises the typed error, built
        once, when the loop gives up.

        ``gone_ok``: a 404/410 is an answer for the caller, not an error;
        ``body_needed=False``: any 2xx will do, whatever its body.
        """
        # Bodies were validated when they were built (see _check_json).
        data = None if body is None else _dumps(body)
        headers = self.headers_plain if data is None else self.headers_json
        deadline = _now() + self.deadline
        attempt = 0
        maybe_done = False  # an earlier attempt may have reached the server and acted
        while True:
            attempt += 1
            started = _now()
            outcome = self._attempt(method, path, data, headers, deadline)
            _log_attempt(method, path, outcome.label(), started, attempt)
            done = outcome.ok or (not body_needed and 200 <= outcome.status < 300)
            if done or (gone_ok and outcome.status in _GONE):
                return outcome, maybe_done
            retry_after = _parse_retry_after(outcome.headers.get("retry-after"))
            delay = _retry_delay(attempt - 1, retry_after)
            retry = (
                attempt <= self.max_retries
                and _should_retry(method, outcome)
                # Waiting minutes would block the caller's web request.
                and (retry_after is None or retry_after <= MAX_RETRY_AFTER)
                # A wait that crosses the deadline is not waited for.
                and _now() + delay < deadline
            )
            if not retry:
                break
            maybe_done = maybe_done or _may_have_acted(outcome)
            _log.warning(
                "retrying %s %s in %.2f s (retry %d of %d): %s",
                method,
                path,
                delay,
                attempt,
                self.max_retries,
                _short_reason(outcome),
            )
            _sleep(delay)
        raise _error_from(outcome, method, path, retry_after, self._secrets(body))

    def _attempt(
        self,
        method: str,
        path: str,
        data: bytes | None,
        headers: Mapping[str, str],
        deadline: float,
    ) -> _Outcome:
        """One attempt, no retry, no typed error: whatever came back, body read."""
        remaining = deadline - _now()
        if remaining <= 0:
            return _Outcome(
                failure=_Failure("deadline exceeded", sent=False, timeout=True)
            )
        connect, read = self.timeout
        timeout = (min(connect, remaining), min(read, remaining))
        response: requests.Response | None = None
        complete = False
        with _WATCHDOG.watch(deadline) as watch:
            try:
                response = self.http.request(
                    method,
                    self.base_url + path,
                    data=data,
                    headers=headers,
                    auth=self.auth,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                    proxies=dict(_NO_PROXIES) if self.bypass_proxies else None,
                )
                status = response.status_code
                cap = MAX_RESPONSE_BYTES if status < 300 else MAX_ERROR_BODY_BYTES
                body, problem, complete = _read_body(response, cap, deadline)
                outcome = _Outcome(
                    status,
                    response.headers,
                    body,
                    problem=problem if status < 300 else None,
                )
            except (_DeadlineExceeded, *_TRANSPORT_ERRORS) as exc:
                timed_out = watch.fired or isinstance(exc, _DeadlineExceeded)
                outcome = _Outcome(failure=_transport_failure(exc, timed_out))
            finally:
                if response is not None:
                    if complete:
                        response.raw.release_conn()  # keep-alive: back to the pool
                    else:
                        response.close()  # unread bytes: never reuse this connection
        return outcome

    def _secrets(self, body: Mapping[str, Any] | None) -> list[str]:
        """Every credential known for a request, for redacting its error."""
        found = [self.auth.key]
        if body is not None:
            _collect_secrets(body, found)
        return found


def _new_http_session() -> requests.Session:
    """A requests session sized for a threaded web app, refusing cookies."""
    http_session = requests.Session()
    adapter = _WatchedAdapter(
        pool_connections=4, pool_maxsize=DEFAULT_POOL_MAXSIZE, max_retries=0
    )
    http_session.mount("https://", adapter)
    http_session.mount("http://", adapter)
    # A cookie set for one user's request must not ride along on another's.
    http_session.cookies.set_policy(
        http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    )
    return http_session


def _read_body(
    response: requests.Response, cap: int, deadline: float
) -> tuple[bytes, str | None, bool]:
    """Read at most ``cap`` decoded bytes before ``deadline``.

    Returns (body, problem, complete): ``problem`` says why the body is not all
    there (too large, an encoding we cannot decode); ``complete`` is True when
    the whole body was read and the connection may be reused.
    """
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read
    encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding not in ("identity", ""):
        return b"", f"unsupported Content-Encoding {encoding[:40]!r}", False
    chunks: list[bytes] = []
    size = 0
    while True:
        if _now() >= deadline:
            raise _DeadlineExceeded
        chunk = read(_READ_CHUNK, decode_content=False)
        if not chunk:
            return b"".join(chunks), None, True
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, cap - size + 1)
                # Bounded inflation: never more than the cap, whatever the ratio.
                if decoder.unconsumed_tail:
                    size = cap + 1
            except zlib.error:
                return b"".join(chunks), f"body is not valid {encoding}", False
        size += len(chunk)
        chunks.append(chunk)
        if size > cap:
            body = b"".join(chunks)[:cap]
            return body, f"body larger than {cap} bytes", False


def _transport_failure(exc: BaseException, timed_out: bool) -> _Failure:
    """A requests/urllib3 exception as a failure reason (URL credentials scrubbed)."""
    reason = _scrub_urls(_clean(str(exc)[:MAX_ERROR_BODY_BYTES]))
    if timed_out:
        return _Failure("deadline exceeded", sent=True, timeout=True)
    timeout = isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError))
    timeout = (
        timeout or isinstance(exc, socket.timeout) or "timed out" in reason.lower()
    )
    return _Failure(reason, sent=not _never_sent(exc), timeout=timeout)


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly did not reach the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(
        exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader)
    ):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        # NewConnectionError (refused, DNS) is a ConnectTimeoutError in urllib3 2.
        return isinstance(
            reason,
            (
                urllib3.exceptions.NewConnectionError,
                urllib3.exceptions.ConnectTimeoutError,
            ),
        )
    return False


def _may_have_acted(outcome: _Outcome) -> bool:
    """Whether a failed attempt may have reached the server and done the work."""
    if outcome.failure is not None:
        return outcome.failure.sent
    return outcome.status >= 500 and outcome.status != 503


def _error_from(
    outcome: _Outcome,
    method: str,
    path: str,
    retry_after: float | None,
    secrets: Sequence[str | None],
) -> AvaturnError:
    """The typed, redacted error for the outcome the loop gave up on."""
    failure = outcome.failure
    if failure is not None:
        kind = APITimeoutError if failure.timeout else APIConnectionError
        what = "timed out" if failure.timeout else "failed"
        reason = _REDACTOR.text(failure.reason, secrets, limit=_MAX_DETAIL_CHARS)
        return kind(
            f"{method} {path} {what}: {reason}",
            method=method,
            path=path,
            request_sent=failure.sent,
        )
    status = outcome.status
    if status < 400:
        why = outcome.problem or "not followed (check the base URL)"
        kind_text = "redirect" if 300 <= status < 400 else "response"
        return APIResponseError(
            f"{status} {kind_text} from {method} {path}: {why}",
            status_code=status,
            method=method,
            path=path,
        )
    return _status_error(outcome, method, path, retry_after, secrets)


def _status_error(
    outcome: _Outcome,
    method: str,
    path: str,
    retry_after: float | None,
    secrets: Sequence[str | None],
) -> APIStatusError:
    """Build the typed, redacted error for a 4xx/5xx answer."""
    text = outcome.body.decode("utf-8", errors="replace")
    parsed = _parse_json(text)
    body: Any
    if parsed is _NOT_JSON:
        body = (
            _REDACTOR.text(_plain_text(text), secrets, limit=_MAX_DETAIL_CHARS) or None
        )
    else:
        body = _REDACTOR.json(parsed, secrets)
    detail = body
    if isinstance(body, dict):
        detail = next(
            (body[k] for k in ("detail", "message", "error") if k in body), body
        )
    request_id = outcome.headers.get("x-request-id")
    if request_id is not None:
        request_id = _REDACTOR.text(request_id, secrets, limit=100) or None
    return _error_class(outcome.status)(
        status_code=outcome.status,
        detail=detail,
        request_id=request_id,
        method=method,
        path=path,
        body=body,
        retry_after=retry_after,
    )


def _error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP status."""
    if status == 400:
        return BadRequestError
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status == 410:
        return GoneError
    if status == 422:
        return UnprocessableEntityError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return InternalServerError
    return APIStatusError


_NOT_JSON = object()


def _parse_json(text: str) -> Any:
    """``json.loads``, or ``_NOT_JSON`` for anything it cannot take (bad or too deep)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _json_object(outcome: _Outcome, method: str, path: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer, else APIResponseError."""
    payload = _decode_object(outcome.body)
    if payload is None:
        raise APIResponseError(
            f"{outcome.status} response to {method} {path} is not a JSON object",
            status_code=outcome.status,
            method=method,
            path=path,
        )
    return payload


def _decode_object(body: bytes) -> dict[str, Any] | None:
    """A UTF-8 JSON object, or None (kept apart so no raising frame holds the body)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    payload = _parse_json(text)
    return payload if isinstance(payload, dict) else None


def _string_field(
    payload: Mapping[str, Any], name: str, outcome: _Outcome, method: str, path: str
) -> str:
    """A non-empty string field of a 2xx JSON object, else APIResponseError."""
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise APIResponseError(
            f"{outcome.status} response to {method} {path} has no {name!r} string",
            status_code=outcome.status,
            method=method,
            path=path,
        )
    return value


def _log_attempt(
    method: str, path: str, outcome: str, started: float, attempt: int
) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        elapsed = (_now() - started) * 1000
        _log.debug(
            "%s %s -> %s in %.1f ms (attempt %d)",
            method,
            path,
            outcome,
            elapsed,
            attempt,
        )


def _short_reason(outcome: _Outcome) -> str:
    """A retried attempt's reason for the WARNING line: no server text at all."""
    if outcome.failure is not None:
        return outcome.label()
    try:
        return f"{outcome.status} {http.HTTPStatus(outcome.status).phrase}"
    except ValueError:
        return str(outcome.status)


class _BearerAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer``; keeps the key out of reprs and session headers."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = "Bearer " + self.key
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


# -- pooled minting clients (shared per process) ------------------------------ #

_shared_http_session: requests.Session | None = None


def _shared_http() -> requests.Session:
    """The pooled session every Cartesia mint of this process sends through."""
    global _shared_http_session
    http_session = _shared_http_session
    if http_session is None:
        with _default_lock:
            if _shared_http_session is None:
                _shared_http_session = _new_http_session()
            http_session = _shared_http_session
    return http_session


class _OpenAIPool:
    """``openai.OpenAI`` clients kept per (key, base URL, organization, project).

    Built lazily and thread-safely, with our timeouts; at most
    ``_OPENAI_POOL_SIZE``, least recently used dropped first (not closed: a
    thread may still be using it; its connections close when it is collected).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[tuple[str | None, ...], Any] = OrderedDict()

    def __repr__(self) -> str:
        return f"_OpenAIPool({len(getattr(self, '_clients', ()))} clients)"

    def get(self, api_key: str | None) -> Any:
        auth = _BearerAuth(
            _check_key(_resolve_key(api_key, "OPENAI_API_KEY", "an OpenAI API key"))
        )
        openai = _import_openai()  # before the key sits in a plain local below
        # What openai.OpenAI reads from the environment when it is built.
        settings = (auth.key, *map(os.environ.get, _OPENAI_SETTINGS))
        with self._lock:
            client = self._clients.get(settings)
            if client is not None:
                self._clients.move_to_end(settings)
                return client
        connect, read = DEFAULT_TIMEOUT
        timeout = openai.Timeout(read, connect=connect)
        client = openai.OpenAI(api_key=auth.key, timeout=timeout)
        with self._lock:
            client = self._clients.setdefault(settings, client)
            self._clients.move_to_end(settings)
            while len(self._clients) > _OPENAI_POOL_SIZE:
                self._clients.popitem(last=False)
        return client

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()


_OPENAI_SETTINGS = ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")
_OPENAI_POOL = _OpenAIPool()


def _sdk_failure(exc: BaseException, api_key: str | None, client: object) -> str:
    """An SDK exception as one redacted line (no key local stays in the caller's frame)."""
    client_key = getattr(client, "api_key", None)
    known = (api_key, client_key if isinstance(client_key, str) else None)
    return _REDACTOR.text(f"{type(exc).__name__}: {exc}", known)


def _import_openai() -> Any:
    """The openai module; ConfigurationError where it is not installed."""
    import importlib.util

    if importlib.util.find_spec("openai") is None:
        raise ConfigurationError(
            "minting an OpenAI client secret needs the openai package: "
            "pip install 'avaturn-session[openai]'"
        )
    import openai

    return openai


# -- the deadline watchdog: bounds a trickle of headers or body -------------- #


class _Watch:
    """One attempt under watch: its deadline, its socket once known, whether it fired."""

    __slots__ = ("deadline", "fired", "sock")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sock: object = None
        self.fired = False

    def __repr__(self) -> str:
        return f"_Watch(fired={getattr(self, 'fired', None)})"


class _Watchdog:
    """One daemon thread that shuts down the socket of an attempt past its deadline.

    requests' read timeout applies to each read, so a server trickling a byte
    a second would hold a worker for minutes; shutting the socket down ends
    the blocked read at once, whatever its timeout.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watches: set[_Watch] = set()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    @contextlib.contextmanager
    def watch(self, deadline: float) -> Iterator[_Watch]:
        """Watch the calling thread's next request until the block ends."""
        watch = _Watch(deadline)
        with self._cond:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="avaturn-session-deadline", daemon=True
                )
                self._thread.start()
            if deadline < self._wake_at:
                self._cond.notify()
        self._local.watch = watch
        try:
            yield watch
        finally:
            self._local.watch = None
            with self._cond:
                self._watches.discard(watch)

    def arm(self, sock: object) -> None:
        """Called by our connections before reading a response: the socket to cut."""
        watch = getattr(self._local, "watch", None)
        if watch is None or sock is None:
            return
        with self._cond:
            watch.sock = sock
            if watch.fired:
                _shutdown(sock)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = _now()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    self._watches.discard(watch)
                    watch.fired = True
                    if watch.sock is not None:
                        _shutdown(watch.sock)
                self._wake_at = min(
                    (w.deadline for w in self._watches), default=math.inf
                )
                timeout = None if self._wake_at == math.inf else self._wake_at - now
                self._cond.wait(timeout)


def _shutdown(sock: object) -> None:
    """End a blocked read on ``sock`` from another thread (TLS state untouched)."""
    # urllib3's TLS-in-TLS transport wraps the real socket as ``.socket``.
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(raw, socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _WATCHDOG.arm(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _WATCHDOG.arm(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections tell the watchdog their socket."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _WATCHED_POOLS  # not SOCKS: it has its own
        return manager


# -- fork safety -------------------------------------------------------------- #

# Transports with a pool of their own; each gets a fresh pool in a forked child.
_LIVE_TRANSPORTS: weakref.WeakSet[_Transport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child shares no connection, lock or thread with its parent.

    The parent's pools are dropped, never closed: closing would not touch the
    parent's sockets, but nothing of theirs may be used here either.
    """
    global _default_lock, _WATCHDOG, _OPENAI_POOL, _shared_http_session
    _default_lock = threading.Lock()
    _WATCHDOG = _Watchdog()
    _OPENAI_POOL = _OpenAIPool()
    _shared_http_session = None
    _REDACTOR.reset_lock()
    for transport in list(_LIVE_TRANSPORTS):
        transport.reset_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- #
# Retry policy
# --------------------------------------------------------------------------- #


def _should_retry(method: str, outcome: _Outcome) -> bool:
    """Whether a failed attempt may be sent again without risking double work."""
    failure = outcome.failure
    # The request never reached the server (refused, DNS, connect timeout): safe for all.
    if failure is not None and not failure.sent:
        return True
    # 429 and 503: the server turned the request away without doing it.
    if outcome.status in (429, 503):
        return True
    # Past this point the server may have done the work: only DELETE is idempotent.
    if method != "DELETE":
        return False
    # DELETE: read timeouts, resets and cut-off bodies after sending.
    if failure is not None:
        return True
    # DELETE: transient server and gateway failures.
    return outcome.status in (500, 502, 504)


def _retry_delay(retries_done: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the jittered backoff, or the server's
    ``Retry-After`` when longer (so ``Retry-After: 0`` is never a hot loop)."""
    backoff = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    backoff *= 1 - _JITTER * _random()
    return backoff if retry_after is None else max(retry_after, backoff)


def _random() -> float:
    """Uniform in [0, 1) for the jitter; patched in tests."""
    return random.random()


def _sleep(seconds: float) -> None:
    """Every wait of this module goes through here, so tests can patch it."""
    time.sleep(seconds)


def _now() -> float:
    """The monotonic clock every deadline is measured on; patched in tests."""
    return time.monotonic()


def _parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()[:64]
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
# Validation
# --------------------------------------------------------------------------- #

_Timeout = float | tuple[float, float]

# Body fields that have a parameter of their own, and that parameter's name.
_NAMED_FIELDS = {
    "conversation_engine": "engine",
    "avatar_id": "avatar_id",
    "background": "background",
    "render_model": "render_model",
    "user_absent_timeout": "user_absent_timeout",
    "max_duration": "max_duration",
}

# Required non-empty string fields of the engine types the library knows.
_ENGINE_REQUIRED: dict[str, tuple[str, ...]] = {
    "openai-realtime": ("client_secret",),
    "cartesia": ("access_token", "agent_id"),
    "external": ("url",),
}


def _build_create_body(
    engine: Mapping[str, Any] | None, options: _CreateOptions
) -> dict[str, Any]:
    """Validate the create options; the JSON body with only the fields that were set."""
    body: dict[str, Any] = {}
    if engine is not None:
        body["conversation_engine"] = _check_engine(engine)
    avatar_id = options.get("avatar_id")
    if avatar_id is not None:
        body["avatar_id"] = _check_text(avatar_id, "avatar_id")
    background = options.get("background")
    if background is not None:
        if background not in _BACKGROUNDS:
            raise ConfigurationError(
                f"background must be one of {', '.join(_BACKGROUNDS)}"
            )
        body["background"] = background
    render_model = options.get("render_model")
    if render_model is not None:
        body["render_model"] = _check_text(render_model, "render_model")
    absent = options.get("user_absent_timeout")
    if absent is not None:
        body["user_absent_timeout"] = _check_int(
            absent, "user_absent_timeout", _MIN_USER_ABSENT_TIMEOUT, None
        )
    duration = options.get("max_duration")
    if duration is not None:
        body["max_duration"] = _check_int(
            duration, "max_duration", _MIN_MAX_DURATION, _MAX_MAX_DURATION
        )
    extra = options.get("extra")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ConfigurationError("extra must be a mapping of top-level fields")
        for key, value in extra.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError("extra keys must be non-empty strings")
            if key in _NAMED_FIELDS:
                raise ConfigurationError(
                    f"extra repeats {key!r}: pass it as the {_NAMED_FIELDS[key]!r} parameter"
                )
            body[key] = value
        _check_json(dict(extra), "extra")  # the engine was checked on its own
    return body


def _check_engine(engine: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an engine mapping; returns a shallow copy. Unknown types pass through."""
    if not isinstance(engine, Mapping):
        raise ConfigurationError("engine must be a mapping with a 'type'")
    _check_json(engine, "engine")
    kind = engine.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError("engine needs a non-empty string 'type'")
    for name in _ENGINE_REQUIRED.get(kind, ()):
        value = engine.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{kind} engine needs a non-empty string {name!r}")
    if kind == "text-echo":
        tts = engine.get("tts")
        voice = tts.get("voice_id") if isinstance(tts, Mapping) else None
        if not isinstance(voice, str) or not voice:
            raise ConfigurationError(
                "text-echo engine needs tts.voice_id, a non-empty string"
            )
    if kind == "external":
        _check_external(engine)
    return dict(engine)


def _check_external(engine: Mapping[str, Any]) -> None:
    parts = _split_url(engine["url"], "external engine url")
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigurationError("external engine url must be a ws:// or wss:// URL")
    headers = engine.get("headers")
    if headers is not None:
        _check_headers(headers)
    audio = engine.get("audio")
    if audio is not None:
        user = audio.get("user") if isinstance(audio, Mapping) else None
        rate = user.get("sample_rate") if isinstance(user, Mapping) else None
        _check_int(rate, "user_sample_rate", 1, None)


def _check_headers(headers: object) -> None:
    """A mapping of header names to values, both strings without line breaks."""
    if not isinstance(headers, Mapping):
        raise ConfigurationError("external engine headers must be a mapping")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            raise ConfigurationError(
                "external engine headers must map strings to strings"
            )
        if _CONTROL.search(name + value):
            raise ConfigurationError(
                "external engine headers must not contain control characters"
            )


def _check_text(value: object, name: str) -> str:
    """A non-empty string that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    if not _is_utf8(value):
        raise ConfigurationError(f"{name} is not valid Unicode text")
    return value


def _is_utf8(text: str) -> bool:
    """False for strings UTF-8 cannot encode (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_int(value: object, name: str, low: int, high: int | None) -> int:
    """An int (not a bool) within [low, high]; ``high=None`` means ``_MAX_INT``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer")
    if value < low or value > (_MAX_INT if high is None else high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        shown = str(value) if -(10**15) < value < 10**15 else "a huge number"
        raise ConfigurationError(f"{name} must be {bounds}, got {shown}")
    return value


def _check_json(value: object, name: str) -> None:
    """JSON we can send: plain types, string keys, UTF-8 text, not too deep."""
    problem = _json_problem(value, 0)
    if problem is None:
        try:
            _dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            problem = _clean(str(exc))[:200]
    if problem is not None:
        raise ConfigurationError(f"{name} is not JSON-serialisable: {problem}")


def _dumps(value: object) -> bytes:
    """Compact UTF-8 JSON, as sent."""
    return json.dumps(
        value, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def _json_problem(value: object, depth: int) -> str | None:
    """Why ``value`` cannot be sent as JSON, or None (depth-bounded recursion).

    Checks run most common type first; ``dict`` before the slower ABC check.
    """
    if depth > _MAX_JSON_DEPTH:
        return f"nested deeper than {_MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return None if _is_utf8(value) else "a string is not valid Unicode text"
    if value is None or isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):
        return None if -(10**4000) < value < 10**4000 else "an integer is too large"
    if isinstance(value, (dict, Mapping)):
        for key, item in value.items():
            if not isinstance(key, str):
                return "object keys must be strings"
            problem = _json_problem(key, depth + 1) or _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"{type(value).__name__} is not a JSON type"


def _resolve_key(given: str | None, variable: str, what: str) -> str:
    key = given if given is not None else os.environ.get(variable)
    if not key:
        raise ConfigurationError(f"{what} is needed: pass api_key or set {variable}")
    return key


def _check_key(key: object) -> str:
    """Refuse keys that could inject headers or fail to encode."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError("the API key must be a non-empty string")
    if not _KEY_CHARS.fullmatch(key):
        raise ConfigurationError(
            "the API key contains whitespace, control or non-ASCII characters"
        )
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
    if not isinstance(url, str):
        raise ConfigurationError("base_url must be a string")
    return _checked_base_url(url)


@functools.lru_cache(maxsize=64)
def _checked_base_url(url: str) -> str:
    """``_check_base_url`` for a string, cached: the same few URLs come back on
    every call (errors are not cached)."""
    parts = _split_url(url, "base_url")
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError("base_url must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError(
            "base_url must use https:// (http:// only for loopback hosts)"
        )
    root = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path, "", "")
    ).rstrip("/")
    try:  # what requests itself would refuse at send time (bad IDNA host, ...)
        requests.PreparedRequest().prepare_url(root + _PATH_SESSIONS, None)
    except (requests.RequestException, ValueError):
        root = ""
    if not root:
        raise ConfigurationError("base_url is not a valid URL")
    return root


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    import ipaddress  # only here: most hosts are names, checked above

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_timeout(timeout: object) -> _Timeout:
    """A positive number or a (connect, read) pair of them; never None."""
    if timeout is None:
        raise ConfigurationError("timeout must not be None: no call may hang forever")
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
        return (_check_seconds(connect, "timeout"), _check_seconds(read, "timeout"))
    return _check_seconds(timeout, "timeout")


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"{name} must be seconds (a number)"
            + (" or a (connect, read) pair" if name == "timeout" else "")
        )
    if not (0 < value <= _MAX_SECONDS):  # also refuses NaN
        raise ConfigurationError(
            f"{name} seconds must be positive and at most {_MAX_SECONDS:.0f}"
        )
    return float(value)


def _timeout_pair(timeout: _Timeout) -> tuple[float, float]:
    return timeout if isinstance(timeout, tuple) else (timeout, timeout)


def _session_path(session_id: str) -> str:
    """The session's URL path, the id percent-encoded as exactly one segment."""
    _check_text(session_id, "session_id")
    # requests decodes %2E back to ".", so a dot-segment cannot be encoded away.
    if session_id in (".", ".."):
        raise ConfigurationError("session_id must not be '.' or '..'")
    return _PATH_SESSIONS + "/" + urllib.parse.quote(session_id, safe="")


# --------------------------------------------------------------------------- #
# Redaction
# --------------------------------------------------------------------------- #

_REDACTED = "***"
# Shorter values are not scrubbed by value (they would shred every message);
# real keys and tokens are far longer, and secret-named fields are hidden anyway.
_MIN_SECRET_CHARS = 4

# Keys whose values are credentials wherever they appear in a JSON document.
_SECRET_KEYS = frozenset(
    {
        "client_secret",
        "access_token",
        "api_key",
        "apikey",
        "token",
        "session_token",
        "sessiontoken",
        "secret",
        "password",
        "authorization",
        "headers",
    }
)
# C0 and C1 control characters: a server's ESC or BEL never reaches a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What an API key may hold: printable ASCII, no space (no header injection).
_KEY_CHARS = re.compile(r"[!-~]+")
_USERINFO = re.compile(r"//[^/@\s]+@")
_QUERY = re.compile(r"\?[^\s'\")\]]*")
_TAGS = re.compile(r"<[^>]{0,200}>")


class _Redactor:
    """The one place that removes secrets from what the library shows.

    Secrets are the values it is given (keys, engine credentials) plus every
    session token this process received (the last ``_REMEMBERED_TOKENS``), so a
    token one client received is scrubbed from another client's error text.
    """

    def __init__(self) -> None:
        self._tokens: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)
        self._lock = threading.Lock()

    def remember(self, token: str) -> None:
        with self._lock:
            self._tokens.append(token)

    def forget(self) -> None:
        """Drop every remembered token (tests start from a clean slate)."""
        with self._lock:
            self._tokens.clear()

    def reset_lock(self) -> None:
        self._lock = threading.Lock()

    def secrets(self, extra: Sequence[str | None] = ()) -> list[str]:
        with self._lock:
            found = {
                s for s in (*extra, *self._tokens) if s and len(s) >= _MIN_SECRET_CHARS
            }
        return sorted(found, key=len, reverse=True)

    def text(
        self,
        text: str,
        extra: Sequence[str | None] = (),
        *,
        limit: int = _MAX_DETAIL_CHARS,
    ) -> str:
        """One clean line: bounded, no control characters, URL credentials or
        queries, and no known secret (nor a secret's prefix cut by the bound)."""
        secrets = self.secrets(extra)
        text = self._string(text, secrets)
        for secret in secrets:
            # A body cut at its cap may end with the first part of a secret.
            tail = text[-len(secret) :]
            for cut in range(len(tail), 3, -1):
                if tail.endswith(secret[:cut]):
                    text = text[:-cut] + _REDACTED
                    break
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def json(self, value: Any, extra: Sequence[str | None] = ()) -> Any:
        """A copy of a JSON value: credentials (by key or value) as ``***``,
        keys and strings cleaned, nesting cut at ``_MAX_JSON_DEPTH``."""
        return self._json(value, self.secrets(extra), False, 0)

    def _json(self, value: Any, secrets: list[str], hidden: bool, depth: int) -> Any:
        if depth > _MAX_JSON_DEPTH:
            return "..."
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                name = self._string(str(key), secrets)
                secret = hidden or str(key).lower() in _SECRET_KEYS
                out[name] = self._json(item, secrets, secret, depth + 1)
            return out
        if isinstance(value, list):
            return [self._json(item, secrets, hidden, depth + 1) for item in value]
        if isinstance(value, str):
            return _REDACTED if hidden else self._string(value, secrets)
        return value

    @staticmethod
    def _string(text: str, secrets: list[str]) -> str:
        """Bounded, control characters out, known secrets and URL credentials as ``***``."""
        text = _clean(text[:MAX_ERROR_BODY_BYTES])
        for secret in secrets:
            text = text.replace(secret, _REDACTED)
        return _scrub_urls(text)


_REDACTOR = _Redactor()


def _clean(text: str) -> str:
    """Control characters (ESC, BEL, CR, ...) as spaces."""
    return _CONTROL.sub(" ", text)


def _scrub_urls(text: str) -> str:
    """URL userinfo (``//user:pass@``) and query strings as ``***``."""
    return _QUERY.sub("?***", _USERINFO.sub("//***@", text))


def _collect_secrets(value: object, found: list[str], secret: bool = False) -> None:
    """Append every credential-looking string inside a JSON-like value to ``found``."""
    if isinstance(value, str):
        if secret:
            found.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect_secrets(item, found, secret or str(key).lower() in _SECRET_KEYS)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secrets(item, found, secret)


def _plain_text(text: str) -> str:
    """An error body as one line: HTML tags dropped, whitespace folded (bounded)."""
    return " ".join(_TAGS.sub(" ", text[:MAX_ERROR_BODY_BYTES]).split())


def _render_detail(detail: Any) -> str:
    """A server ``detail`` (string, FastAPI list, or any JSON) as one clean line."""
    if detail is None or detail == "":
        return ""
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list) and all(isinstance(item, Mapping) for item in detail):
        parts = []
        for item in detail:
            loc = item.get("loc")
            steps = loc if isinstance(loc, list) else [] if loc is None else [loc]
            where = ".".join(str(p) for p in steps if p != "body")
            msg = str(item.get("msg", item))
            parts.append(f"{where}: {msg}" if where else msg)
        text = "; ".join(parts)
    else:
        try:
            text = json.dumps(detail, default=str)
        except (ValueError, RecursionError):
            text = ""
    text = " ".join(_clean(text[:MAX_ERROR_BODY_BYTES]).split())
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 3] + "..."
    return text


# --------------------------------------------------------------------------- #
# Command line (the core above never refers to anything below)
# --------------------------------------------------------------------------- #

_MINTED = "<minted at run time>"
_KEY_VARIABLES = ("AVATURN_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``avaturn-session`` command line; returns the exit status.

    stdout carries one JSON object; errors are one line on stderr. Exit 0 on
    success, 2 for usage and configuration errors, 1 for everything else.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result = args.run(args)
    except ConfigurationError as exc:
        _print_error(exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line on stderr, never a traceback
        _print_error(exc)
        return 1
    print(json.dumps(result))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    import argparse  # only when the CLI runs

    class Parser(argparse.ArgumentParser):
        """argparse, but a usage error is one line on stderr like every other error."""

        def error(self, message: str) -> NoReturn:
            print(
                f"avaturn-session: error: usage: {_clean(message)} (see {self.prog} --help)",
                file=sys.stderr,
            )
            raise SystemExit(2)

    parser = Parser(
        prog="avaturn-session",
        description="Create, drive and end Avaturn.Live avatar sessions. "
        "Keys: AVATURN_API_KEY, OPENAI_API_KEY, CARTESIA_API_KEY; "
        "AVATURN_BASE_URL picks another API host.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    create = commands.add_parser(
        "create",
        help="create a session and print its id, token and api_host",
        formatter_class=raw,
        epilog="examples:\n"
        "  avaturn-session create --dry-run --openai --voice marin\n"
        "  avaturn-session create --openai --instructions 'Be brief.' --user-absent-timeout 30\n"
        "  avaturn-session create --cartesia-agent agent_123\n"
        '  avaturn-session create --engine \'{"type": "text-echo", '
        '"tts": {"engine": "elevenlabs", "voice_id": "v1"}}\'',
    )
    source = create.add_mutually_exclusive_group()
    source.add_argument("--engine", metavar="JSON", help="any engine config as JSON")
    source.add_argument(
        "--openai",
        action="store_true",
        help="mint an OpenAI client secret (OPENAI_API_KEY)",
    )
    source.add_argument(
        "--cartesia-agent",
        metavar="AGENT_ID",
        help="mint a Cartesia access token (CARTESIA_API_KEY) for this agent",
    )
    source.add_argument(
        "--text-echo-voice",
        metavar="VOICE_ID",
        help="legacy text-echo engine, ElevenLabs voice",
    )
    create.add_argument(
        "--model", help="with --openai: Realtime model (default gpt-realtime)"
    )
    create.add_argument("--voice", help="with --openai: voice, e.g. marin or cedar")
    create.add_argument(
        "--instructions", metavar="TEXT", help="with --openai: instructions"
    )
    create.add_argument("--avatar-id", metavar="ID")
    create.add_argument("--background", choices=_BACKGROUNDS)
    create.add_argument("--render-model", metavar="NAME")
    create.add_argument(
        "--user-absent-timeout", metavar="S", type=int, help="seconds, >= 10"
    )
    create.add_argument(
        "--max-duration", metavar="S", type=int, help="seconds, 60..86400"
    )
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the request (secrets as ***) without sending it",
    )
    create.set_defaults(run=_cli_create)

    say_cmd = commands.add_parser(
        "say",
        help="queue text for the avatar to speak; prints the task id",
        formatter_class=raw,
        epilog="example:\n  avaturn-session say 3f2a... 'Welcome back!'",
    )
    say_cmd.add_argument("session_id", metavar="SESSION_ID")
    say_cmd.add_argument("text", metavar="TEXT")
    say_cmd.set_defaults(run=_cli_say)

    terminate = commands.add_parser(
        "terminate",
        help="end a session; prints whether this call ended it",
        formatter_class=raw,
        epilog="example:\n  avaturn-session terminate 3f2a...",
    )
    terminate.add_argument("session_id", metavar="SESSION_ID")
    terminate.set_defaults(run=_cli_terminate)
    return parser


def _cli_create(args: argparse.Namespace) -> dict[str, Any]:
    if not args.openai and (args.model or args.voice or args.instructions):
        raise ConfigurationError("--model, --voice and --instructions go with --openai")
    engine: Any = None
    if args.engine is not None:
        engine = _parse_json(args.engine)
        if engine is _NOT_JSON:
            raise ConfigurationError("--engine is not valid JSON")
    elif args.openai:
        engine = openai_realtime_engine(_MINTED)
    elif args.cartesia_agent is not None:
        engine = cartesia_engine(_MINTED, args.cartesia_agent)
    elif args.text_echo_voice is not None:
        engine = text_echo_engine(args.text_echo_voice)
    options: _CreateOptions = {
        "avatar_id": args.avatar_id,
        "background": args.background,
        "render_model": args.render_model,
        "user_absent_timeout": args.user_absent_timeout,
        "max_duration": args.max_duration,
    }
    openai_session: dict[str, Any] = {
        "type": "realtime",
        "model": args.model or "gpt-realtime",
    }
    if args.instructions:
        openai_session["instructions"] = args.instructions
    if args.voice:
        openai_session["audio"] = {"output": {"voice": args.voice}}
    # Validate every option before any credential is minted or request is sent.
    body = _build_create_body(engine, options)
    if args.dry_run:
        root = _check_base_url(os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL)
        shown = _REDACTOR.json(body, _env_keys())
        minted = shown.get("conversation_engine", {})
        for name in ("client_secret", "access_token"):
            if engine is not None and engine.get(name) == _MINTED:
                minted[name] = _MINTED  # not a secret: a placeholder
        return {"method": "POST", "url": root + _PATH_SESSIONS, "json": shown}
    with AvaturnClient() as client:
        if args.openai:
            engine = openai_realtime_engine(mint_openai_client_secret(openai_session))
        elif args.cartesia_agent is not None:
            engine = cartesia_engine(mint_cartesia_access_token(), args.cartesia_agent)
        created = client.create_session(engine, **options)
    return {
        "session_id": created.session_id,
        "token": created.token,
        "api_host": created.api_host,
    }


def _cli_say(args: argparse.Namespace) -> dict[str, Any]:
    with AvaturnClient() as client:
        return {"task_id": client.say(args.session_id, args.text)}


def _cli_terminate(args: argparse.Namespace) -> dict[str, Any]:
    with AvaturnClient() as client:
        return {"terminated": client.terminate_session(args.session_id)}


def _env_keys() -> list[str | None]:
    return [os.environ.get(name) for name in _KEY_VARIABLES]


def _print_error(exc: BaseException) -> None:
    text = _REDACTOR.text(f"{type(exc).__name__}: {exc}", _env_keys(), limit=2000)
    print("avaturn-session: error: " + text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
