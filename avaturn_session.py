"""avaturn-session: run the whole life of an Avaturn.Live avatar session, blocking.

Mint the conversation engine's short-lived credential, create the session, hand
its token to the browser's Web SDK, push text for the avatar to say, terminate.

    import avaturn_session as av  # keys: AVATURN_API_KEY, OPENAI_API_KEY

    secret = av.mint_openai_client_secret({"model": "gpt-realtime"})
    engine = av.openai_realtime_engine(secret)
    with av.session(engine, user_absent_timeout=30) as s:
        options = s.web_sdk_options()  # {"sessionToken": ..., "apiHost": ...}
        ...  # hand `options` to the browser's `new AvaturnHead(el, options)`
    # leaving the block terminated the session, whatever happened inside

    with av.session(av.text_echo_engine("voice_id")) as s:
        av.say(s.session_id, "Hello!")  # text-echo sessions speak pushed text
"""

from __future__ import annotations

import contextlib
import http.client
import http.cookiejar
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
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict, cast

import requests
import requests.adapters
import requests.auth
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.response
import urllib3.util

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

__version__ = "0.3.0"

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

#: Production Avaturn.Live API; also the Web SDK's default ``apiHost``.
DEFAULT_BASE_URL = "https://api.avaturn.live"

#: The browser Web SDK, pinned: the one place its version is set (a
#: self-contained ES module; ``sdk_url=`` or ``AVATURN_SDK_URL`` serve another).
WEB_SDK_URL = "https://cdn.jsdelivr.net/npm/@avaturn-live/web-sdk@0.3.7/dist/main.js"

#: Seconds to wait for a connection, then for each read of the response.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)

#: Total seconds one public call may take, name resolution, every attempt and
#: wait, headers and body included; nothing is sent once it has passed.
DEFAULT_DEADLINE = 60.0

#: Extra attempts after the first, for the failures that are safe to repeat.
DEFAULT_MAX_RETRIES = 2

#: Backoff before the first retry, in seconds; it doubles for each further one.
INITIAL_RETRY_DELAY = 0.5

#: Upper bound of the exponential backoff, in seconds.
MAX_RETRY_DELAY = 8.0

#: A longer ``Retry-After`` (seconds) is not waited for: the error is raised.
MAX_RETRY_AFTER = 60.0

#: Connections kept per host, for as many threads at once (requests keeps 10).
DEFAULT_POOL_MAXSIZE = 32

#: Seconds a pooled connection may idle and still be reused (httpx's default),
#: or a second less than a shorter ``Keep-Alive: timeout=`` of the server's: no
#: request is written into a connection the server is closing as idle.
KEEPALIVE_EXPIRY = 5.0

#: Largest 2xx answer read, in bytes (a longer one is an ``APIResponseError``).
MAX_RESPONSE_BYTES = 1024 * 1024

#: Largest error (4xx/5xx) body read, in bytes; the rest is dropped.
MAX_ERROR_BODY_BYTES = 64 * 1024

# Random part of each backoff delay: the delay is scaled by 1 - JITTER * U[0, 1).
_JITTER = 0.25

# Largest integer option accepted where the API sets no bound.
_MAX_INT = 2**31 - 1

# Longest timeout or deadline accepted, in seconds (a day).
_MAX_SECONDS = 24 * 3600.0

# Bytes asked of the socket per read of a response body.
_READ_CHUNK = 16 * 1024

# Create-session limits from the API reference: (least, most) seconds.
_LIMITS = {"user_absent_timeout": (10, None), "max_duration": (60, 86400)}
_BACKGROUNDS = ("default", "transparent")

# OpenAI Realtime client secrets live 10 s to 2 h; Cartesia tokens up to 1 h.
_OPENAI_MIN_EXPIRES_IN = 10
_OPENAI_MAX_EXPIRES_IN = 7200
_OPENAI_DEFAULT_SESSION: dict[str, Any] = {"type": "realtime", "model": "gpt-realtime"}
_CARTESIA_MAX_EXPIRES_IN = 3600

# Minting providers: (the key's variable, the base URL's variable and default).
_MINTERS = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "cartesia": ("CARTESIA_API_KEY", "CARTESIA_BASE_URL", "https://api.cartesia.ai"),
}
# Headers sent when minting: Cartesia's API version; OpenAI's organization and
# project, when their variables (read by the openai SDK too) are set.
_CARTESIA_VERSION = "2025-04-16"
_OPENAI_HEADERS = (
    ("OpenAI-Organization", "OPENAI_ORG_ID"),
    ("OpenAI-Project", "OPENAI_PROJECT_ID"),
)

_PATH_SESSIONS = "/api/v1/sessions"
_USER_AGENT = f"avaturn-session/{__version__}"

# Deepest JSON redacted (deeper is cut); longest detail quoted in a message;
# session tokens remembered to be scrubbed from any later error.
_MAX_JSON_DEPTH = 32
_MAX_DETAIL_CHARS = 500
_REMEMBERED_TOKENS = 256

_log = logging.getLogger("avaturn_session")

# --------------------------------------------------------------------------- #
# Exceptions
# --------------------------------------------------------------------------- #


class AvaturnError(Exception):
    """Root of every error this module raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors defeat Exception's pickling: rebuild from the
        # attributes, so celery and multiprocessing deliver the same error.
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
        super().__init__(status_code, detail)
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

    def __str__(self) -> str:
        """``422 Unprocessable Entity (request req_1): loc: msg``."""
        text = _status_text(getattr(self, "status_code", 0))
        if getattr(self, "request_id", None):
            text += f" (request {self.request_id})"
        detail = _render_detail(getattr(self, "detail", None))
        return f"{text}: {detail}" if detail else text


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


def _status_text(status: int) -> str:
    """``422 Unprocessable Entity``, or ``599 Error`` for a status without a name."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


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
        text = json.dumps(detail, default=str)
    return _redact(text, ())  # one clean, bounded line (secrets went earlier)


# --------------------------------------------------------------------------- #
# Data classes
# --------------------------------------------------------------------------- #


class AvaturnSession:
    """A created session: its id, the browser's token and the API host it lives on.
    Immutable, compared by value; ``repr()`` leaves out the token."""

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
        return type(other) is AvaturnSession and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> tuple[Any, ...]:
        return (AvaturnSession, self._fields())

    def __repr__(self) -> str:
        sid, host = getattr(self, "session_id", None), getattr(self, "api_host", None)
        return f"AvaturnSession(session_id={sid!r}, api_host={host!r})"

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
        engine["headers"] = dict(headers) if isinstance(headers, Mapping) else headers
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
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> str:
    """Mint a short-lived OpenAI Realtime client secret (``ek_...``) for one session.

    ``session``: the Realtime session config (model, instructions, voice, tools;
    default model ``gpt-realtime``). ``expires_in``: seconds, 10..7200. Key from
    ``api_key`` or ``OPENAI_API_KEY``; host from ``OPENAI_BASE_URL``. One POST
    over this module's pooled transport, ``timeout`` and ``deadline`` as in
    ``AvaturnClient``, one attempt. An ``openai_client`` given is used instead,
    with no retries and our timeout. Raises ``ConfigurationError`` (bad input,
    no key) or ``CredentialError`` (``provider="openai"``).
    """
    _check_int(expires_in, "expires_in", _OPENAI_MIN_EXPIRES_IN, _OPENAI_MAX_EXPIRES_IN)
    if session is not None and not isinstance(session, Mapping):
        raise ConfigurationError("session must be a mapping")
    body = {
        "expires_after": {"anchor": "created_at", "seconds": expires_in},
        "session": {
            "type": "realtime",
            **(_OPENAI_DEFAULT_SESSION if session is None else session),
        },
    }
    if openai_client is not None:
        # The SDK has no total deadline: it caps the SDK's one timeout instead.
        seconds = min(
            max(_check_timeout(timeout)), _check_seconds(deadline, "deadline")
        )
        return _mint_with_sdk(openai_client, _Payload(body), seconds)
    minter = _minter("openai", api_key, None, timeout, deadline)
    return _mint("openai", minter, "/realtime/client_secrets", body)


def mint_cartesia_access_token(
    *,
    api_key: str | None = None,
    expires_in: int = 300,
    base_url: str | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> str:
    """Mint a short-lived Cartesia access token with the agent grant.

    Key from ``api_key`` or ``CARTESIA_API_KEY``; host from ``base_url`` or
    ``CARTESIA_BASE_URL``. ``expires_in``: seconds, 1..3600. One attempt, as
    ``mint_openai_client_secret``; raises ``ConfigurationError`` or
    ``CredentialError`` (``provider="cartesia"``).
    """
    _check_int(expires_in, "expires_in", 1, _CARTESIA_MAX_EXPIRES_IN)
    minter = _minter("cartesia", api_key, base_url, timeout, deadline)
    body = {"grants": {"agent": True}, "expires_in": expires_in}
    return _mint("cartesia", minter, "/access-token", body)


def _minter(
    provider: str,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: object = DEFAULT_TIMEOUT,
    deadline: object = DEFAULT_DEADLINE,
) -> _Transport:
    """A transport to a minting provider, on the session every mint shares;
    never retried (a mint that may have reached the provider is not replayed)."""
    key_variable, url_variable, default_url = _MINTERS[provider]
    headers = {"Cartesia-Version": _CARTESIA_VERSION}
    if provider == "openai":
        headers = {h: os.environ[v] for h, v in _OPENAI_HEADERS if os.environ.get(v)}
    auth, url = _auth(api_key, key_variable), base_url or os.environ.get(url_variable)
    return _Transport(
        auth, url or default_url, timeout, deadline, 0, _minting_session, headers
    )


def _mint(provider: str, minter: _Transport, path: str, body: dict[str, Any]) -> str:
    """POST a minting request; the credential in its answer, else CredentialError."""
    payload, field = _Payload(body), "value" if provider == "openai" else "token"
    try:
        return minter.call("POST", path, payload).string(field)
    except AvaturnError as exc:
        # Chained to our own typed, redacted error (never a transport exception).
        raise CredentialError(
            f"{provider}: could not mint a credential: {exc}", provider=provider
        ) from exc


def _mint_with_sdk(client: Any, payload: _Payload, timeout: float) -> str:
    """Mint through the caller's ``openai.OpenAI``; any failure is a CredentialError."""
    failure = "the response carried no client secret value"
    value: object = None
    try:
        configured = client.with_options(timeout=timeout, max_retries=0)
        value = configured.realtime.client_secrets.create(**payload.body).value
    except Exception as exc:  # noqa: BLE001 - any SDK failure is a CredentialError
        # Keep the reason, not the exception: its frames hold the request and
        # its Authorization header, which a traceback capturer would record.
        key = getattr(client, "api_key", None)
        secrets = payload.secrets + ((key,) if isinstance(key, str) else ())
        failure = _redact(f"{type(exc).__name__}: {exc}", _known_secrets(secrets))
    if not isinstance(value, str) or not value:
        raise CredentialError(
            f"openai: could not mint a credential: {failure}", provider="openai"
        )
    return value


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #


class AvaturnClient:
    """A thread-safe, fork-safe client for the Avaturn.Live session API.

    ``api_key``, ``base_url``: default ``AVATURN_API_KEY``, ``AVATURN_BASE_URL``
    or ``DEFAULT_BASE_URL`` (``http://`` for loopback hosts only). ``timeout``:
    seconds, or a ``(connect, read)`` pair; ``deadline``: seconds for a whole
    call, every attempt and wait included; ``max_retries``: extra attempts,
    only where repeating cannot double-bill. ``http_session`` (``http`` in 0.2):
    a ``requests.Session`` to send through, never closed; make one per process.
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
        http: requests.Session | None = None,
    ) -> None:
        if http is not None:  # the old name shadowed the stdlib module
            import warnings

            if http_session is not None:
                raise ConfigurationError("pass http_session only")
            message = "AvaturnClient(http=...) is deprecated: use http_session="
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            http_session = http
        auth = _auth(api_key, "AVATURN_API_KEY")
        url = base_url or os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL
        self._transport = _Transport(
            auth, url, timeout, deadline, max_retries, http_session
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

    def warm(self) -> bool:
        """Open this client's keep-alive connection now, sending nothing (see
        ``warm()``); False, logged as a WARNING, when it cannot."""
        return self._transport.warm()

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

        ``engine``: any engine mapping; ``user_absent_timeout`` (>= 10) and
        ``max_duration`` (60..86400): seconds; ``extra``: more top-level fields.
        Only what was set is sent. Bad input raises ``ConfigurationError`` before
        anything is sent; never retried once it may have reached the server. A
        session named in an unusable answer is ended before the error is raised.
        """
        options: _CreateOptions = {
            "avatar_id": avatar_id,
            "background": background,
            "render_model": render_model,
            "user_absent_timeout": user_absent_timeout,
            "max_duration": max_duration,
            "extra": extra,
        }
        payload = _Payload(_build_create_body(engine, options))
        answer = self._transport.call("POST", _PATH_SESSIONS, payload)
        fields = answer.json_object()
        session_id, token = fields.get("session_id"), fields.get("token")
        if isinstance(token, str) and token:
            _TOKENS.append(token)
            if isinstance(session_id, str) and session_id:
                return AvaturnSession(session_id, token, self.base_url)
        missing = (
            "token" if isinstance(session_id, str) and session_id else "session_id"
        )
        error = answer.unusable(f"has no {missing!r} string")
        # An answer that names a session in any form: end it rather than leak it.
        named = str(session_id) if isinstance(session_id, (str, int)) else ""
        unnamed = not named or isinstance(session_id, bool)
        if not unnamed and not self._terminate_quietly(named, "unusable answer"):
            error.session_id = named  # it may still be running
        raise error

    def say(self, session_id: str, text: str) -> str:
        """Queue ``text`` for the avatar to speak (text-echo); returns the task id.
        Never retried once it may have reached the server (it would say it twice)."""
        path = _session_path(session_id) + "/tasks"
        _check_text(text, "text")
        if not text.strip():
            raise ConfigurationError("text must not be blank")
        return self._transport.call("POST", path, _Payload({"text": text})).string(
            "task_id"
        )

    def terminate_session(self, session_id: str) -> bool:
        """End a session; ``True`` if this call ended it, ``False`` if it was gone.

        Safe twice and in cleanup code. Timeouts, resets and 500/502/503/504 are
        retried; a 404 after an attempt that may have arrived counts as ended.
        """
        answer = self._transport.call("DELETE", _session_path(session_id), gone_ok=True)
        return answer.status not in _GONE or answer.acted_before

    @contextlib.contextmanager
    def session(
        self,
        engine: Mapping[str, Any] | None = None,
        **options: Unpack[_CreateOptions],
    ) -> Iterator[AvaturnSession]:
        """Create a session for a ``with`` block; end it on leaving, whatever happens.

        Takes ``create_session``'s parameters. If ending fails while the block's
        own exception propagates, that one wins and a WARNING is logged.
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

    def _terminate_quietly(self, session_id: str, why: str) -> bool:
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
# Module-level functions (one shared client, following the environment)
# --------------------------------------------------------------------------- #

_default_client: AvaturnClient | None = None
_lock = threading.Lock()

# What the shared client is built from; it is rebuilt when these change.
_CLIENT_VARIABLES = ("AVATURN_API_KEY", "AVATURN_BASE_URL")


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


def warm() -> list[str]:
    """Open the connections a first session start needs: once per worker, after fork.

    The shared client's, and each minting provider's whose key is set, in
    parallel; nothing is sent, so nothing is billed. Returns the base URLs it
    could not reach (logged as WARNINGs); raises only ``ConfigurationError``.
    Safe twice and in a forked child. Idle past ``KEEPALIVE_EXPIRY``, a
    connection is opened again by the next call.
    """
    transports = [_client()._transport]
    for provider, (key_variable, *_) in _MINTERS.items():
        if os.environ.get(key_variable):
            transports.append(_minter(provider))
    cold: list[str] = []

    def warm_one(transport: _Transport) -> None:
        if not transport.warm():
            cold.append(transport.base_url)

    threads = [threading.Thread(target=warm_one, args=(t,)) for t in transports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(cold)


def close_shared_clients() -> None:
    """Release the connections the module shares (the module-level functions'
    client, the minting session), e.g. at shutdown; reopened on next use."""
    global _default_client
    with _lock:
        client, _default_client = _default_client, None
    if client is not None:
        client.close()
    _minting_session.close()


def _client() -> AvaturnClient:
    """The shared client, built from the environment (again when it changes),
    once even under racing threads."""
    global _default_client
    client = _default_client
    if client is None or client._env != _client_env():
        with _lock:
            client = _default_client
            if client is None or client._env != _client_env():
                client = _default_client = AvaturnClient()
                client._env = _client_env()
    return client


def _client_env() -> tuple[str | None, ...]:
    return tuple(map(os.environ.get, _CLIENT_VARIABLES))


# --------------------------------------------------------------------------- #
# Transport: one send makes one attempt; the loop decides; one error is built
# --------------------------------------------------------------------------- #

_GONE = (404, 410)
# Per request: proxies from the environment are not used (loopback hosts).
_NO_PROXIES: dict[str, Any] = {"http": None, "https": None, "all": None}
# What one attempt's I/O raises when no usable answer arrived.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_TIMEOUTS = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)


class _Payload:
    """A JSON body as sent, and the credentials inside it; its repr shows neither.
    What ``json.dumps(allow_nan=False)`` refuses is a ConfigurationError."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        problem = None
        try:
            text = json.dumps(
                body, allow_nan=False, ensure_ascii=False, separators=(",", ":")
            )
        except (TypeError, ValueError, RecursionError) as exc:
            # Only the reason, raised outside: the exception holds the body.
            problem = _CONTROL.sub(" ", str(exc))[:200]
        if problem is not None:
            raise ConfigurationError(f"the request is not valid JSON: {problem}")
        if _SURROGATE.search(text):
            raise ConfigurationError("the request holds text that is not valid Unicode")
        self.data = text.encode("utf-8")
        self.body = body
        # Every string under a secret-named key (or under ``headers``), any depth.
        found: list[str] = []
        stack: list[tuple[object, bool]] = [(body, False)]
        while stack:
            value, secret = stack.pop()
            if isinstance(value, str) and secret:
                found.append(value)
            elif isinstance(value, Mapping):
                for key, item in value.items():
                    hidden = secret or bool(_SECRET_KEY.fullmatch(str(key)))
                    stack.append((item, hidden))
            elif isinstance(value, (list, tuple)):
                stack.extend((item, secret) for item in value)
        self.secrets = tuple(found)

    def __repr__(self) -> str:
        return f"<_Payload {len(getattr(self, 'data', b''))} bytes>"


class _Result:
    """What one attempt got: a status, headers and a bounded body, or a failure
    (``status`` 0, with the reason and whether the request may have been sent).
    Its repr shows no content."""

    def __init__(
        self,
        method: str,
        path: str,
        status: int = 0,
        headers: Mapping[str, str] | None = None,
        *,
        failure: str | None = None,
        sent: bool = True,
        timed_out: bool = False,
    ) -> None:
        self.method, self.path, self.status = method, path, status
        self.headers: Mapping[str, str] = {} if headers is None else headers
        self.body = b""
        # Why a 2xx body cannot be used (too large, compressed), if it cannot.
        self.problem: str | None = None
        self.failure, self.sent, self.timed_out = failure, sent, timed_out
        # Set by the loop: an earlier attempt may have reached the server and acted.
        self.acted_before = False

    def __repr__(self) -> str:
        size = len(getattr(self, "body", b""))
        return f"<_Result status={getattr(self, 'status', None)} body={size} bytes>"

    def label(self) -> str:
        """What happened, for a log line: a status, or the failure's kind (no server text)."""
        if self.failure is not None:
            return "timeout" if self.timed_out else "connection error"
        return _status_text(self.status)

    def json_object(self) -> dict[str, Any]:
        """The JSON object of this 2xx answer, else APIResponseError."""
        try:  # a UnicodeDecodeError is a ValueError too
            fields = None if self.problem else json.loads(self.body.decode())
        except (ValueError, RecursionError):
            fields = None
        if not isinstance(fields, dict):
            raise self.unusable(self.problem or "not a JSON object")
        return fields

    def string(self, name: str) -> str:
        """A non-empty string field of this 2xx JSON answer, else APIResponseError."""
        value = self.json_object().get(name)
        if not isinstance(value, str) or not value:
            raise self.unusable(f"has no {name!r} string")
        return value

    def unusable(self, why: str) -> APIResponseError:
        """The error for this answer, unusable because of ``why``."""
        return APIResponseError(
            f"{self.status} response to {self.method} {self.path}: {why}",
            status_code=self.status,
            method=self.method,
            path=self.path,
        )


class _Expired(Exception):
    """Internal: the call's deadline passed; ``sent`` says whether the request left."""

    def __init__(self, *, sent: bool) -> None:
        super().__init__("deadline exceeded")
        self.sent = sent


class _CallState(threading.local):
    """The instant the current thread's call must end by; our connections read it."""

    expires_at = math.inf


_call = _CallState()


class _Transport:
    """Requests to one host, with the retry rules, the deadline and the caps; a
    pooled session of its own unless given one (closed by ``close()``)."""

    def __init__(
        self,
        auth: _BearerAuth,
        base_url: object,
        timeout: object = DEFAULT_TIMEOUT,
        deadline: object = DEFAULT_DEADLINE,
        max_retries: object = 0,
        http_session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.auth = auth
        self.base_url = _check_base_url(base_url)
        self.timeout = _check_timeout(timeout)
        self.deadline = _check_seconds(deadline, "deadline")
        self.max_retries = _check_int(max_retries, "max_retries", 0, None)
        if http_session is not None and not isinstance(http_session, requests.Session):
            raise ConfigurationError("http_session must be a requests.Session")
        self.owns_http = http_session is None
        self.http = _new_http_session() if http_session is None else http_session
        # A proxy from the environment would see a loopback request in clear.
        self.bypass_proxies = _is_loopback(
            urllib.parse.urlsplit(self.base_url).hostname
        )
        # identity: the body caps count what the server sends, nothing inflates.
        common = {
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            **(headers or {}),
        }
        self.headers_plain = common
        self.headers_json = {**common, "Content-Type": "application/json"}
        if self.owns_http:
            _OWN_POOLS.add(self)

    def __repr__(self) -> str:
        return f"_Transport(base_url={getattr(self, 'base_url', None)!r})"

    def close(self) -> None:
        if self.owns_http:
            self.http.close()

    def call(
        self,
        method: str,
        path: str,
        payload: _Payload | None = None,
        *,
        gone_ok: bool = False,
    ) -> _Result:
        """Send with the retry rules; returns the 2xx answer (or, with
        ``gone_ok``, the 404/410). Raises the typed error, built once, when
        the loop gives up."""
        expires_at = _now() + self.deadline
        attempt = 0
        acted = False
        while True:
            attempt += 1
            started = _now()
            result = self._send(method, path, payload, expires_at)
            if _log.isEnabledFor(logging.DEBUG):
                took = (
                    method,
                    path,
                    result.label(),
                    (_now() - started) * 1000,
                    attempt,
                )
                _log.debug("%s %s -> %s in %.1f ms (attempt %d)", *took)
            if 200 <= result.status < 300 or (gone_ok and result.status in _GONE):
                result.acted_before = acted
                return result
            header = result.headers.get("retry-after")
            retry_after = _parse_retry_after(header) if header else None
            retry = attempt <= self.max_retries and _should_retry(
                method, result, retry_after
            )
            delay = _retry_delay(attempt - 1, retry_after) if retry else 0.0
            # A wait that crosses the deadline is not waited for.
            if not retry or _now() + delay >= expires_at:
                raise _error(result, retry_after, self.auth, payload)
            # Whether this attempt may have reached the server and done the work.
            if result.failure is not None:
                acted = acted or result.sent
            else:
                acted = acted or (result.status >= 500 and result.status != 503)
            why = (method, path, delay, attempt, self.max_retries, result.label())
            _log.warning("retrying %s %s in %.2f s (retry %d of %d): %s", *why)
            _sleep(delay)

    def _send(
        self, method: str, path: str, payload: _Payload | None, expires_at: float
    ) -> _Result:
        """One attempt: the answer with its body read (at most its cap), or why
        there is none. Arms the deadline for exactly this attempt's bytes."""
        left = expires_at - _now()
        if left <= 0:
            return _Result(
                method, path, failure="deadline exceeded", sent=False, timed_out=True
            )
        connect, read = self.timeout
        response = None
        _call.expires_at = expires_at
        try:
            response = self.http.request(
                method,
                self.base_url + path,
                data=None if payload is None else payload.data,
                headers=self.headers_plain if payload is None else self.headers_json,
                auth=self.auth,
                timeout=(min(connect, left), min(read, left)),
                allow_redirects=False,
                stream=True,
                proxies=dict(_NO_PROXIES) if self.bypass_proxies else None,
            )
            result = _Result(method, path, response.status_code, response.headers)
            cap = MAX_RESPONSE_BYTES if result.status < 300 else MAX_ERROR_BODY_BYTES
            encoding = response.headers.get("content-encoding", "identity").strip()
            if encoding.lower() not in ("identity", ""):
                result.problem = f"unsupported Content-Encoding {encoding[:40]!r}"
                return result
            chunks: list[bytes] = []
            size = 0
            for chunk in response.raw.stream(_READ_CHUNK, decode_content=False):
                if _now() >= expires_at:  # a caller's session: reads are not bounded
                    raise _Expired(sent=True)
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    result.problem = f"body larger than {cap} bytes"
                    break
            result.body = b"".join(chunks)[:cap]
            return result
        except _Expired as exc:
            return _Result(
                method, path, failure="deadline exceeded", sent=exc.sent, timed_out=True
            )
        except _TRANSPORT_ERRORS as exc:  # the reason is redacted in _error
            reason = f"{type(exc).__name__}: {exc}"
            sent, timed_out = not _never_sent(exc), isinstance(exc, _TIMEOUTS)
            return _Result(method, path, failure=reason, sent=sent, timed_out=timed_out)
        finally:
            _call.expires_at = math.inf
            if response is not None:
                # A whole body already put the connection back in the pool; an
                # unread rest closes it, so it is never reused.
                response.close()

    def warm(self) -> bool:
        """Open one keep-alive connection to the host now, sending nothing
        (only on our own connections; a caller's session is left alone)."""
        url = self.base_url + "/"
        adapter = self.http.get_adapter(url)
        if not isinstance(adapter, _Adapter):
            return True
        connect = self.timeout[0]
        _call.expires_at = _now() + connect
        try:
            proxies = dict(_NO_PROXIES) if self.bypass_proxies else None
            # the pool a request would use: the same proxies, verify and cert
            env = self.http.merge_environment_settings(url, proxies, None, None, None)
            request = requests.Request("GET", url).prepare()
            pool = adapter.get_connection_with_tls_context(
                request, env["verify"], env["proxies"], env["cert"]
            )
            conn = pool._get_conn()  # type: ignore[attr-defined]
            try:
                if conn.is_closed:
                    conn.timeout = connect
                    conn.connect()
            finally:
                pool._put_conn(conn)  # type: ignore[attr-defined]
        except (_Expired, *_TRANSPORT_ERRORS) as exc:
            reason = _redact(f"{type(exc).__name__}: {exc}", (self.auth.key,))
            _log.warning("could not warm %s: %s", self.base_url, reason)
            return False
        finally:
            _call.expires_at = math.inf
        return True


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly did not reach the server."""
    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.InvalidURL)):
        return True
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # Refused, DNS, connect timeout (urllib3 2's NewConnectionError is one too).
    return isinstance(exc, requests.ConnectionError) and isinstance(
        reason, urllib3.exceptions.ConnectTimeoutError
    )


def _error(
    result: _Result,
    retry_after: float | None,
    auth: _BearerAuth,
    payload: _Payload | None,
) -> AvaturnError:
    """The typed, redacted error for the attempt the loop gave up on."""
    method, path = result.method, result.path
    secrets = _known_secrets((auth.key, *(payload.secrets if payload else ())))
    if result.failure is not None:
        kind = APITimeoutError if result.timed_out else APIConnectionError
        what = "timed out" if result.timed_out else "failed"
        return kind(
            f"{method} {path} {what}: {_redact(result.failure, secrets)}",
            method=method,
            path=path,
            request_sent=result.sent,
        )
    if result.status < 400:  # a redirect
        return result.unusable("a redirect, not followed (check the base URL)")
    text = result.body.decode("utf-8", errors="replace")
    try:
        body = _redact_json(json.loads(text), secrets)
    except (ValueError, RecursionError):
        body = _redact(_TAGS.sub(" ", text), secrets) or None
    fields = body if isinstance(body, dict) else {}
    detail = next(
        (fields[k] for k in ("detail", "message", "error") if k in fields), body
    )
    request_id = result.headers.get("x-request-id")
    if request_id is not None:
        request_id = _redact(request_id, secrets, limit=100) or None
    return _error_class(result.status)(
        status_code=result.status,
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


class _BearerAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer``; keeps the key out of reprs and session headers."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = "Bearer " + self.key
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


def _new_http_session() -> requests.Session:
    """A requests session sized for a threaded web app, on our connections, refusing cookies."""
    http_session = requests.Session()
    adapter = _Adapter(
        pool_connections=4, pool_maxsize=DEFAULT_POOL_MAXSIZE, max_retries=0
    )
    http_session.mount("https://", adapter)
    http_session.mount("http://", adapter)
    # A cookie set for one user's request must not ride along on another's.
    http_session.cookies.set_policy(
        http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    )
    return http_session


# -- our connections: the deadline over name resolution, sending and every read #


class _Reader(socket.SocketIO):
    """A response's socket reads: none starts after the call's deadline, none
    waits past it. (requests' read timeout bounds each read alone, so a server
    trickling a byte a second could otherwise hold a worker for minutes.)"""

    expires_at = math.inf
    read_timeout: float | None = None

    def readinto(self, buffer: Any) -> int | None:
        left = self.expires_at - _now()
        if left <= 0:
            raise _Expired(sent=True)
        by_deadline = self.read_timeout is None or left < self.read_timeout
        self._sock.settimeout(left if by_deadline else self.read_timeout)  # type: ignore[attr-defined]
        try:
            return super().readinto(buffer)
        except TimeoutError:
            if by_deadline:
                raise _Expired(sent=True) from None
            raise


class _Response(http.client.HTTPResponse):
    """http.client's response, reading through ``_Reader``."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        # socket.makefile's reader (it holds the socket open), made ours.
        reader = self.fp.raw
        if type(reader) is socket.SocketIO:
            reader.__class__ = _Reader
            reader = cast(_Reader, reader)
            reader.expires_at = _call.expires_at
            reader.read_timeout = sock.gettimeout()


class _Connection(urllib3.connection.HTTPConnection):
    """urllib3's connection, bounded by the calling thread's deadline; not
    reused once idle past ``KEEPALIVE_EXPIRY``."""

    response_class = _Response
    reusable_until = math.inf

    def _new_conn(self) -> socket.socket:
        # getaddrinfo cannot be interrupted: it runs in a helper thread that
        # is waited for only until the deadline (then left to finish alone).
        host = self._dns_host
        found: list[Any] = []
        lookup = threading.Thread(
            target=_lookup, args=(host, self.port, found), daemon=True
        )
        lookup.start()
        lookup.join(max(0.0, _call.expires_at - _now()))
        if not found:
            raise _Expired(sent=False)
        if isinstance(found[0], Exception):
            raise urllib3.exceptions.NameResolutionError(self.host, self, found[0])  # type: ignore[arg-type]
        errors: list[Exception] = []
        for *_, address in found[0]:
            if _now() >= _call.expires_at:
                raise _Expired(sent=False)
            self._dns_host = address[0]
            try:
                sock = super()._new_conn()
            except urllib3.exceptions.ConnectTimeoutError as exc:  # refused too
                errors.append(exc)
                continue
            finally:
                self._dns_host = host
            self.reusable_until = _now() + KEEPALIVE_EXPIRY
            return sock
        raise errors[-1]

    def send(self, data: Any) -> None:
        if self.sock is None:
            self.connect()  # http.client would connect inside send: first, here
        if _now() >= _call.expires_at:
            raise _Expired(sent=False)  # nothing goes out after the deadline
        super().send(data)

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        response = super().getresponse()
        # Idle time counts from here; a server's shorter Keep-Alive timeout wins.
        match = _KEEP_ALIVE_TIMEOUT.search(response.headers.get("keep-alive", ""))
        expiry = KEEPALIVE_EXPIRY if match is None else float(match[1]) - 1.0
        self.reusable_until = _now() + min(expiry, KEEPALIVE_EXPIRY)
        return response

    @property
    def is_connected(self) -> bool:
        if self.sock is None or _now() >= self.reusable_until:
            return False
        if not urllib3.util.wait_for_read(self.sock, timeout=0.0):
            return True
        # Readable while idle: the server closed it, or (TLS 1.3, a connection
        # warmed but not used yet) sent its session tickets: read to tell.
        timeout = self.sock.gettimeout()
        try:
            self.sock.settimeout(0.0)
            self.sock.recv(1)  # b"": closed; any byte: not an answer of ours
        except ssl.SSLWantReadError:
            return True  # only TLS records, now processed
        except OSError:
            pass
        finally:
            self.sock.settimeout(timeout)
        return False


class _TLSConnection(_Connection, urllib3.connection.HTTPSConnection):
    """``_Connection`` over TLS."""


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {"http": _Pool, "https": _TLSPool}
_KEEP_ALIVE_TIMEOUT = re.compile(r"timeout=(\d{1,6})")


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter on our connections (direct and through HTTP proxies)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connections of its own
            manager.pool_classes_by_scheme = _POOLS
        return manager


def _lookup(host: str, port: int, found: list[Any]) -> None:
    """getaddrinfo for ``_Connection``, run in a helper thread."""
    try:
        found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
    except (OSError, UnicodeError) as exc:
        found.append(exc)


# The pooled session every mint of this process sends through.
_minting_session = _new_http_session()

# -- fork safety -------------------------------------------------------------- #

# Transports with a pool of their own; each gets a fresh pool in a forked child.
_OWN_POOLS: weakref.WeakSet[_Transport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child shares no connection or lock with its parent. The
    parent's pools are dropped, never closed: nothing of theirs is used here."""
    global _lock, _minting_session
    _lock = threading.Lock()
    _minting_session = _new_http_session()
    for transport in list(_OWN_POOLS):
        transport.http = _new_http_session()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- #
# Retry policy
# --------------------------------------------------------------------------- #


def _should_retry(method: str, result: _Result, retry_after: float | None) -> bool:
    """Whether a failed attempt may be sent again without risking double work."""
    # Waiting minutes would block the caller's web request.
    if retry_after is not None and retry_after > MAX_RETRY_AFTER:
        return False
    # The request never reached the server (refused, DNS, connect timeout): safe for all.
    if result.failure is not None and not result.sent:
        return True
    # 429 and 503: the server turned the request away without doing it.
    if result.status in (429, 503):
        return True
    # Past this point the server may have done the work: only DELETE is idempotent.
    if method != "DELETE":
        return False
    # DELETE: read timeouts, resets and cut-off bodies after sending.
    if result.failure is not None:
        return True
    # DELETE: transient server and gateway failures.
    return result.status in (500, 502, 504)


def _retry_delay(retries_done: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the jittered backoff, or the server's
    ``Retry-After`` when longer (so ``Retry-After: 0`` is never a hot loop)."""
    backoff = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    backoff *= 1 - _JITTER * _random()
    return backoff if retry_after is None else max(retry_after, backoff)


# The clock every deadline is measured on, the one way this module waits, and
# the jitter's randomness: module attributes, so that tests can patch them.
_now = time.monotonic
_sleep = time.sleep
_random = random.random


def _parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if bad."""
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
    if not isinstance(extra, Mapping):
        raise ConfigurationError("extra must be a mapping of top-level fields")
    for key, value in extra.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError("extra keys must be non-empty strings")
        if key == "conversation_engine" or key in _CreateOptions.__annotations__:
            named = "engine" if key == "conversation_engine" else key  # a parameter
            raise ConfigurationError(f"extra repeats {key!r}: pass it as {named}=")
        body[key] = value
    return body


def _check_engine(engine: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an engine mapping; returns a shallow copy. Unknown types pass through."""
    if not isinstance(engine, Mapping):
        raise ConfigurationError("engine must be a mapping with a 'type'")
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
            raise ConfigurationError("text-echo engine needs a non-empty tts.voice_id")
    if kind == "external":
        parts = _split_url(engine["url"], "external engine url")
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ConfigurationError("external engine url must be ws:// or wss://")
        if engine.get("headers") is not None:
            _check_headers(engine["headers"])
        audio = engine.get("audio")
        if audio is not None:
            user = audio.get("user") if isinstance(audio, Mapping) else None
            rate = user.get("sample_rate") if isinstance(user, Mapping) else None
            _check_int(rate, "user_sample_rate", 1, None)
    return dict(engine)


def _check_headers(headers: object) -> None:
    """A mapping of header names to values, both strings without line breaks."""
    if not isinstance(headers, Mapping):
        raise ConfigurationError("external engine headers must be a mapping")
    for name, value in headers.items():
        text = isinstance(name, str) and isinstance(value, str) and name
        if not text or _CONTROL.search(name + value):
            raise ConfigurationError("external engine headers must be plain strings")


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


def _auth(given: str | None, variable: str) -> _BearerAuth:
    """The API key from the argument or the environment, checked, and wrapped at
    once: no frame of ours holds an environment key in a plain local."""
    auth = _BearerAuth(given if given is not None else os.environ.get(variable, ""))
    if not auth.key:
        raise ConfigurationError(f"no API key: pass api_key or set {variable}")
    if not isinstance(auth.key, str):
        raise ConfigurationError("the API key must be a non-empty string")
    if not _KEY_CHARS.fullmatch(auth.key):
        raise ConfigurationError("the API key has whitespace or odd characters")
    return auth


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
        connect, read = timeout
        return (_check_seconds(connect, "timeout"), _check_seconds(read, "timeout"))
    seconds = _check_seconds(timeout, "timeout")
    return (seconds, seconds)


def _check_seconds(value: object, name: str) -> float:
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
# Redaction
# --------------------------------------------------------------------------- #

_REDACTED = "***"
# Shorter values are not scrubbed by value (they would shred every message);
# real keys and tokens are far longer, and secret-named fields are hidden anyway.
_MIN_SECRET_CHARS = 4

# Keys whose values are credentials wherever they appear in a JSON document.
_SECRET_KEY = re.compile(
    r"client_secret|access_token|api_?key|(session_?)?token|secret|password|"
    r"authorization|headers",
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

# The last session tokens this process received (appends and copies are
# atomic under the GIL, so no lock): scrubbed from every later error.
_TOKENS: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)


def _known_secrets(extra: Sequence[str | None]) -> list[str]:
    """The secrets to scrub, longest first: ``extra`` and every remembered token."""
    found = {s for s in (*extra, *tuple(_TOKENS)) if s and len(s) >= _MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def _redact(
    text: str, secrets: Sequence[str], *, limit: int = _MAX_DETAIL_CHARS
) -> str:
    """One clean line: bounded, no control characters, URL credentials or
    queries, and no known secret (nor a secret's start cut off at the end)."""
    text = _CONTROL.sub(" ", text[:MAX_ERROR_BODY_BYTES])
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
    """A copy of a JSON value: credentials (by key or value) as ``***``, keys
    and strings cleaned, nesting cut at ``_MAX_JSON_DEPTH``."""
    if depth > _MAX_JSON_DEPTH:
        return "..."
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            secret = hidden or bool(_SECRET_KEY.fullmatch(key))
            name = _redact(key, secrets, limit=MAX_ERROR_BODY_BYTES)
            out[name] = _redact_json(item, secrets, secret, depth + 1)
        return out
    if isinstance(value, list):
        return [_redact_json(item, secrets, hidden, depth + 1) for item in value]
    if isinstance(value, str):
        return (
            _REDACTED if hidden else _redact(value, secrets, limit=MAX_ERROR_BODY_BYTES)
        )
    return value


# --------------------------------------------------------------------------- #
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
    names = [name for name in _CreateOptions.__annotations__ if name != "extra"]
    options = cast(_CreateOptions, {name: getattr(args, name) for name in names})
    # Validate every option before any credential is minted or request is sent.
    body = _build_create_body(engine, options)
    _Payload(body)
    if client is None:  # --dry-run: the request, secrets masked, minted ones named
        root = _check_base_url(os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL)
        shown = _redact_json(body, _known_secrets(_env_keys()))
        for name in ("client_secret", "access_token"):
            if engine is not None and engine.get(name) == _MINTED:
                shown["conversation_engine"][name] = _MINTED
        return {"method": "POST", "url": root + _PATH_SESSIONS, "json": shown}
    if args.openai:
        realtime: dict[str, Any] = {"model": args.model or "gpt-realtime"}
        if args.instructions:
            realtime["instructions"] = args.instructions
        if args.voice:
            realtime["audio"] = {"output": {"voice": args.voice}}
        engine = openai_realtime_engine(mint_openai_client_secret(realtime))
    elif args.cartesia_agent is not None:
        engine = cartesia_engine(mint_cartesia_access_token(), args.cartesia_agent)
    created = client.create_session(engine, **options)
    return {
        "session_id": created.session_id,
        "token": created.token,
        "api_host": created.api_host,
    }


def _env_keys() -> list[str | None]:
    return [os.environ.get(name) for name in _KEY_VARIABLES]


if __name__ == "__main__":
    sys.exit(main())
