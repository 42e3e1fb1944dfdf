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

import argparse
import contextlib
import email.utils
import http
import http.cookiejar
import ipaddress
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import typing
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing import Self

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_POOL_MAXSIZE",
    "DEFAULT_TIMEOUT",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
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

__version__ = "0.1.0"

# --------------------------------------------------------------------------- #
# Constants
# --------------------------------------------------------------------------- #

#: Production Avaturn.Live API; also the Web SDK's default ``apiHost``.
DEFAULT_BASE_URL = "https://api.avaturn.live"

#: Seconds to wait for a connection, then for each read of the response.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)

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

# Random part of each backoff delay: the delay is scaled by 1 - JITTER * U[0, 1).
_JITTER = 0.25

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
    }
)
_REDACTED = "***"
# Session tokens this process remembers so that later error texts can be
# scrubbed of them, whichever client sees the error.
_REMEMBERED_TOKENS = 256
# Longest server detail quoted in an exception message, in characters.
_MAX_DETAIL_CHARS = 500

_log = logging.getLogger("avaturn_session")
_seen_tokens: deque[str] = deque(maxlen=_REMEMBERED_TOKENS)
_seen_tokens_lock = threading.Lock()

# --------------------------------------------------------------------------- #
# Exceptions
# --------------------------------------------------------------------------- #


class AvaturnError(Exception):
    """Root of every error this module raises."""


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
    """The connection or a read of the response timed out."""


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
        # Set by the retry loop: an earlier attempt's answer was lost after sending.
        self._after_lost_attempt = False
        super().__init__(self._message())

    def _message(self) -> str:
        try:
            phrase = http.HTTPStatus(self.status_code).phrase
        except ValueError:
            phrase = "Error"
        text = f"{self.status_code} {phrase}"
        if self.request_id:
            text += f" (request {self.request_id})"
        rendered = _render_detail(self.detail)
        return f"{text}: {rendered}" if rendered else text

    def __str__(self) -> str:
        return self._message()


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


@dataclass(frozen=True)
class AvaturnSession:
    """A created session: its id, the browser's token and the API host it lives on.

    ``token`` is a credential for the browser only: it is left out of ``repr()``.
    """

    session_id: str
    token: str = field(repr=False)
    api_host: str

    def web_sdk_options(self) -> dict[str, str]:
        """Options for ``new AvaturnHead(element, options)`` in the Web SDK."""
        return {"sessionToken": self.token, "apiHost": self.api_host}


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

    ``url`` must be ``ws://`` or ``wss://``; ``headers`` (str to str) are sent by
    Avaturn when it connects and are treated as secrets; ``user_sample_rate`` is
    the user's audio rate in Hz.
    """
    engine: dict[str, Any] = {"type": "external", "url": url}
    if headers is not None:
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
    configured ``openai.OpenAI``; otherwise one is made from ``api_key`` or
    ``OPENAI_API_KEY``. Raises ``ConfigurationError`` for bad input, a missing key
    or a missing ``openai`` package, and ``CredentialError`` when minting fails.
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
    owned = openai_client is None
    if owned:
        key = _resolve_key(api_key, "OPENAI_API_KEY", "an OpenAI API key")
        try:
            import openai
        except ImportError:
            raise ConfigurationError(
                "minting an OpenAI client secret needs the openai package: "
                "pip install 'avaturn-session[openai]'"
            ) from None
        connect, read = _timeout_pair(DEFAULT_TIMEOUT)
        openai_client = openai.OpenAI(
            api_key=key, timeout=openai.Timeout(read, connect=connect)
        )
    secrets = _known_secrets(api_key, getattr(openai_client, "api_key", None))
    try:
        minted = openai_client.realtime.client_secrets.create(
            expires_after={"seconds": expires_in, "anchor": "created_at"},
            session=config,
        )
        value = minted.value
    except Exception as exc:
        reason = _redact_text(f"{type(exc).__name__}: {exc}", secrets)
        raise CredentialError(
            f"openai: could not mint a Realtime client secret: {reason}",
            provider="openai",
        ) from exc
    finally:
        if owned:
            openai_client.close()
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
) -> str:
    """Mint a short-lived Cartesia access token with the agent grant.

    The key comes from ``api_key`` or ``CARTESIA_API_KEY``; ``base_url`` from the
    argument, ``CARTESIA_BASE_URL`` or ``https://api.cartesia.ai``. ``expires_in``
    is in seconds, 1..3600. One POST, never retried (timeouts as in
    ``AvaturnClient``). Raises ``ConfigurationError`` for bad input and
    ``CredentialError`` (``provider="cartesia"``) when minting fails.
    """
    _check_int(expires_in, "expires_in", 1, _CARTESIA_MAX_EXPIRES_IN)
    key = _check_key(_resolve_key(api_key, "CARTESIA_API_KEY", "a Cartesia API key"))
    root = _check_base_url(
        base_url or os.environ.get("CARTESIA_BASE_URL") or _CARTESIA_BASE_URL
    )
    timeout = _check_timeout(timeout)
    path = "/access-token"
    body = _encode_json({"grants": {"agent": True}, "expires_in": expires_in}, "body")
    headers = {
        "User-Agent": _USER_AGENT,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Cartesia-Version": _CARTESIA_VERSION,
    }
    try:
        with requests.Session() as http_session:
            response = _send(
                http_session,
                "POST",
                root + path,
                path=path,
                data=body,
                headers=headers,
                auth=_BearerAuth(key),
                timeout=timeout,
                secrets=lambda: _known_secrets(key),
            )
            token = _json_field(response, "token", "POST", path)
    except AvaturnError as exc:
        raise CredentialError(
            f"cartesia: could not mint an access token: {exc}", provider="cartesia"
        ) from exc
    return token


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #


class AvaturnClient:
    """A thread-safe client for the Avaturn.Live session API.

    ``api_key`` defaults to ``AVATURN_API_KEY``; ``base_url`` to
    ``AVATURN_BASE_URL``, then ``DEFAULT_BASE_URL`` (``https://`` only, but
    ``http://`` is allowed for loopback hosts). ``timeout`` is in seconds, a float
    or a ``(connect, read)`` pair, never ``None``. ``max_retries`` extra attempts
    are made only where repeating cannot double-bill (see ``_should_retry``).
    ``http`` is a ``requests.Session`` to send through; it is left open by
    ``close()``. Share one instance across all threads of a web app.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http: requests.Session | None = None,
    ) -> None:
        key = _check_key(_resolve_key(api_key, "AVATURN_API_KEY", "an Avaturn API key"))
        self.base_url = _check_base_url(
            base_url or os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL
        )
        self.timeout = _check_timeout(timeout)
        self.max_retries = _check_int(max_retries, "max_retries", 0, None)
        if http is not None and not isinstance(http, requests.Session):
            raise ConfigurationError("http must be a requests.Session")
        self._auth = _BearerAuth(key)
        self._owns_http = http is None
        self._http = http if http is not None else _new_http_session()
        self._headers_json = {
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        self._headers_plain = {"User-Agent": _USER_AGENT, "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"AvaturnClient(base_url={self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (only those of a session this client created)."""
        if self._owns_http:
            self._http.close()

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
            avatar_id=avatar_id,
            background=background,
            render_model=render_model,
            user_absent_timeout=user_absent_timeout,
            max_duration=max_duration,
            extra=extra,
        )
        response = self._request("POST", _PATH_SESSIONS, body)
        session_id = _json_field(response, "session_id", "POST", _PATH_SESSIONS)
        try:
            token = _json_field(response, "token", "POST", _PATH_SESSIONS)
        except APIResponseError as exc:
            # The server made a session we cannot use: end it rather than leak it.
            exc.session_id = None if self._terminate_quietly(session_id) else session_id
            raise
        with _seen_tokens_lock:
            _seen_tokens.append(token)
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
        response = self._request("POST", path, {"text": text})
        return _json_field(response, "task_id", "POST", path)

    def terminate_session(self, session_id: str) -> bool:
        """End a session; ``True`` if this call ended it, ``False`` if it was already gone.

        Safe to call twice and from cleanup code: a 404 or 410 means gone. DELETE
        is idempotent, so timeouts, resets and 500/502/503/504 are retried; a
        404 after an attempt whose answer was lost counts as ended by this call.
        """
        path = _session_path(session_id)
        try:
            self._request("DELETE", path, None)
        except (NotFoundError, GoneError) as gone:
            # Gone. If an earlier attempt's answer was lost, that attempt most
            # likely did the work: report the session as ended by this call.
            return gone._after_lost_attempt
        return True

    @contextlib.contextmanager
    def session(
        self,
        engine: Mapping[str, Any] | None = None,
        *,
        avatar_id: str | None = None,
        background: str | None = None,
        render_model: str | None = None,
        user_absent_timeout: int | None = None,
        max_duration: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Iterator[AvaturnSession]:
        """Create a session for a ``with`` block and terminate it on leaving, whatever happens.

        If terminating fails while the block's own exception propagates, a
        WARNING is logged and the block's exception wins; if the block succeeded,
        the terminate error is raised (a silently leaked session costs money).
        """
        created = self.create_session(
            engine,
            avatar_id=avatar_id,
            background=background,
            render_model=render_model,
            user_absent_timeout=user_absent_timeout,
            max_duration=max_duration,
            extra=extra,
        )
        try:
            yield created
        except BaseException:
            try:
                self.terminate_session(created.session_id)
            except Exception as exc:  # noqa: BLE001 - the block's own error must win
                _log.warning(
                    "could not terminate session %s after an error in the with-block: %s",
                    created.session_id,
                    exc,
                )
            raise
        self.terminate_session(created.session_id)

    # -- internals ---------------------------------------------------------- #

    def _terminate_quietly(self, session_id: str) -> bool:
        try:
            self.terminate_session(session_id)
        except AvaturnError as exc:
            _log.warning("could not terminate unusable session %s: %s", session_id, exc)
            return False
        return True

    def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
    ) -> requests.Response:
        """Send with the retry rules; returns the 2xx response or raises."""
        data = None if body is None else _encode_json(body, "request body")
        headers = self._headers_plain if data is None else self._headers_json
        url = self.base_url + path
        retries = 0
        maybe_done = False
        while True:
            started = time.perf_counter()
            try:
                response = _send(
                    self._http,
                    method,
                    url,
                    path=path,
                    data=data,
                    headers=headers,
                    auth=self._auth,
                    timeout=self.timeout,
                    secrets=lambda: self._secrets(body),
                )
            except (APIConnectionError, APIStatusError) as error:
                outcome: object = (
                    error.status_code
                    if isinstance(error, APIStatusError)
                    else type(error.__cause__).__name__
                )
                _log_attempt(method, path, outcome, started, retries + 1)
                if isinstance(error, APIStatusError):
                    error._after_lost_attempt = maybe_done
                maybe_done = maybe_done or (
                    isinstance(error, APIConnectionError) and error.request_sent
                )
                if retries >= self.max_retries or not _should_retry(method, error):
                    raise
                retry_after = (
                    error.retry_after if isinstance(error, APIStatusError) else None
                )
                if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                    raise  # waiting that long would block the caller's web request
                delay = _retry_delay(retries, retry_after)
                retries += 1
                _log.warning(
                    "retrying %s %s in %.2f s (retry %d of %d): %s",
                    method,
                    path,
                    delay,
                    retries,
                    self.max_retries,
                    _short_reason(error),
                )
                _sleep(delay)
                continue
            except APIResponseError:
                _log_attempt(method, path, "redirect", started, retries + 1)
                raise
            _log_attempt(method, path, response.status_code, started, retries + 1)
            return response

    def _secrets(self, body: Mapping[str, Any] | None) -> tuple[str, ...]:
        """Every credential the library knows of for a request, for redaction."""
        found = _known_secrets(self._auth.key)
        if body is not None:
            _collect_secrets(body, found)
        return tuple(found)


# --------------------------------------------------------------------------- #
# Module-level functions (one shared client, built from the environment)
# --------------------------------------------------------------------------- #

_default_client: AvaturnClient | None = None
_default_lock = threading.Lock()


def create_session(
    engine: Mapping[str, Any] | None = None,
    *,
    avatar_id: str | None = None,
    background: str | None = None,
    render_model: str | None = None,
    user_absent_timeout: int | None = None,
    max_duration: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AvaturnSession:
    """``AvaturnClient.create_session`` on the shared client built from the environment."""
    return _client().create_session(
        engine,
        avatar_id=avatar_id,
        background=background,
        render_model=render_model,
        user_absent_timeout=user_absent_timeout,
        max_duration=max_duration,
        extra=extra,
    )


def say(session_id: str, text: str) -> str:
    """``AvaturnClient.say`` on the shared client built from the environment."""
    return _client().say(session_id, text)


def terminate_session(session_id: str) -> bool:
    """``AvaturnClient.terminate_session`` on the shared client built from the environment."""
    return _client().terminate_session(session_id)


def session(
    engine: Mapping[str, Any] | None = None,
    *,
    avatar_id: str | None = None,
    background: str | None = None,
    render_model: str | None = None,
    user_absent_timeout: int | None = None,
    max_duration: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[AvaturnSession]:
    """``AvaturnClient.session`` on the shared client built from the environment."""
    return _client().session(
        engine,
        avatar_id=avatar_id,
        background=background,
        render_model=render_model,
        user_absent_timeout=user_absent_timeout,
        max_duration=max_duration,
        extra=extra,
    )


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


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #

_MINTED = "<minted at run time>"


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
        result = args.run(parser, args)
    except ConfigurationError as exc:
        _print_error(exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line on stderr, never a traceback
        _print_error(exc)
        return 1
    print(json.dumps(result))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        print(
            f"avaturn-session: error: usage: {message} (see {self.prog} --help)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def _cli_create(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, Any]:
    if not args.openai and (args.model or args.voice or args.instructions):
        raise ConfigurationError("--model, --voice and --instructions go with --openai")
    engine: dict[str, Any] | None = None
    if args.engine is not None:
        try:
            engine = json.loads(args.engine)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"--engine is not valid JSON: {exc.msg} at position {exc.pos}"
            ) from None
    elif args.openai:
        engine = openai_realtime_engine(_MINTED)
    elif args.cartesia_agent is not None:
        engine = cartesia_engine(_MINTED, args.cartesia_agent)
    elif args.text_echo_voice is not None:
        engine = text_echo_engine(args.text_echo_voice)
    options: dict[str, Any] = {
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
    body = _build_create_body(engine, **options)
    if args.dry_run:
        root = _check_base_url(os.environ.get("AVATURN_BASE_URL") or DEFAULT_BASE_URL)
        return {
            "method": "POST",
            "url": root + _PATH_SESSIONS,
            "json": _redact_json(body),
        }
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


def _cli_say(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, Any]:
    with AvaturnClient() as client:
        return {"task_id": client.say(args.session_id, args.text)}


def _cli_terminate(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> dict[str, Any]:
    with AvaturnClient() as client:
        return {"terminated": client.terminate_session(args.session_id)}


def _print_error(exc: BaseException) -> None:
    secrets = _known_secrets(*(os.environ.get(name) for name in _KEY_VARIABLES))
    text = _redact_text(f"{type(exc).__name__}: {exc}", secrets)
    print("avaturn-session: error: " + " ".join(text.split()), file=sys.stderr)


# --------------------------------------------------------------------------- #
# Private helpers
# --------------------------------------------------------------------------- #

_KEY_VARIABLES = ("AVATURN_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY")
_Timeout = float | tuple[float, float]


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
    """A requests session sized for a threaded web app, refusing cookies."""
    http_session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=DEFAULT_POOL_MAXSIZE, max_retries=0
    )
    http_session.mount("https://", adapter)
    http_session.mount("http://", adapter)
    # A cookie set for one user's request must not ride along on another's.
    http_session.cookies.set_policy(
        http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    )
    return http_session


def _send(
    http_session: requests.Session,
    method: str,
    url: str,
    *,
    path: str,
    data: bytes | None,
    headers: Mapping[str, str],
    auth: _BearerAuth,
    timeout: _Timeout,
    secrets: Callable[[], Sequence[str | None]],
) -> requests.Response:
    """One attempt, no retry: the 2xx response, or a typed error (redacted).

    ``secrets`` is called only to build an error, to keep the happy path cheap.
    """
    try:
        response = http_session.request(
            method,
            url,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise _connection_error(exc, method, path, secrets()) from exc
    status = response.status_code
    if status < 300:
        return response
    if status < 400:
        raise APIResponseError(
            f"{status} redirect from {method} {path} not followed (check the base URL)",
            status_code=status,
            method=method,
            path=path,
        )
    raise _status_error(response, method, path, secrets())


def _connection_error(
    exc: requests.RequestException,
    method: str,
    path: str,
    secrets: Sequence[str | None],
) -> APIConnectionError:
    """Map a requests exception to APIConnectionError or APITimeoutError."""
    sent = not _never_sent(exc)
    reason = _redact_text(str(exc), secrets)[:_MAX_DETAIL_CHARS]
    timed_out = isinstance(exc, requests.Timeout) or "timed out" in reason.lower()
    kind = APITimeoutError if timed_out else APIConnectionError
    what = "timed out" if timed_out else "failed"
    return kind(
        f"{method} {path} {what}: {reason}", method=method, path=path, request_sent=sent
    )


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server."""
    if isinstance(exc, requests.ConnectTimeout):
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


def _status_error(
    response: requests.Response, method: str, path: str, secrets: Sequence[str | None]
) -> APIStatusError:
    """Build the typed, redacted error for a 4xx/5xx response."""
    status = response.status_code
    body: Any
    try:
        body = _redact_json(response.json(), secrets)
    except ValueError:
        body = (
            _redact_text(_plain_text(response.text), secrets)[:_MAX_DETAIL_CHARS]
            or None
        )
    detail = body
    if isinstance(body, dict):
        detail = next(
            (body[k] for k in ("detail", "message", "error") if k in body), body
        )
    request_id = response.headers.get("x-request-id")
    retry_after = _parse_retry_after(response.headers.get("retry-after"))
    return _error_class(status)(
        status_code=status,
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


def _should_retry(method: str, error: AvaturnError) -> bool:
    """Whether a failed attempt may be sent again without risking double work."""
    # The request never reached the server (refused, DNS, connect timeout): safe for all.
    if isinstance(error, APIConnectionError) and not error.request_sent:
        return True
    # 429 and 503: the server turned the request away without doing it.
    if isinstance(error, APIStatusError) and error.status_code in (429, 503):
        return True
    # Past this point the server may have done the work: only DELETE is idempotent.
    if method != "DELETE":
        return False
    # DELETE: read timeouts and resets after sending are safe to repeat.
    if isinstance(error, APIConnectionError):
        return True
    # DELETE: transient server and gateway failures.
    return isinstance(error, APIStatusError) and error.status_code in (500, 502, 504)


def _retry_delay(retries_done: int, retry_after: float | None) -> float:
    """Seconds to wait before the next attempt: Retry-After, else jittered backoff."""
    if retry_after is not None:
        return retry_after
    backoff = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return backoff * (1 - _JITTER * _random())


def _random() -> float:
    """Uniform in [0, 1) for the jitter; patched in tests."""
    return random.random()


def _sleep(seconds: float) -> None:
    """Every wait of this module goes through here, so tests can patch it."""
    time.sleep(seconds)


def _parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _short_reason(error: AvaturnError) -> str:
    if isinstance(error, APIStatusError):
        return error._message().split(":", 1)[0]
    return type(error.__cause__).__name__ if error.__cause__ else type(error).__name__


def _log_attempt(
    method: str, path: str, outcome: object, started: float, attempt: int
) -> None:
    if _log.isEnabledFor(logging.DEBUG):
        elapsed = (time.perf_counter() - started) * 1000
        _log.debug(
            "%s %s -> %s in %.1f ms (attempt %d)",
            method,
            path,
            outcome,
            elapsed,
            attempt,
        )


def _json_field(response: requests.Response, name: str, method: str, path: str) -> str:
    """A non-empty string field of a 2xx JSON response, else APIResponseError."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise APIResponseError(
            f"{response.status_code} response to {method} {path} is not a JSON object",
            status_code=response.status_code,
            method=method,
            path=path,
        )
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise APIResponseError(
            f"{response.status_code} response to {method} {path} has no {name!r} string",
            status_code=response.status_code,
            method=method,
            path=path,
        )
    return value


def _build_create_body(
    engine: Mapping[str, Any] | None,
    *,
    avatar_id: str | None = None,
    background: str | None = None,
    render_model: str | None = None,
    user_absent_timeout: int | None = None,
    max_duration: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the create options; the JSON body with only the fields that were set."""
    body: dict[str, Any] = {}
    if engine is not None:
        body["conversation_engine"] = _check_engine(engine)
    if avatar_id is not None:
        body["avatar_id"] = _check_text(avatar_id, "avatar_id")
    if background is not None:
        if background not in _BACKGROUNDS:
            raise ConfigurationError(
                f"background must be one of {', '.join(_BACKGROUNDS)}"
            )
        body["background"] = background
    if render_model is not None:
        body["render_model"] = _check_text(render_model, "render_model")
    if user_absent_timeout is not None:
        body["user_absent_timeout"] = _check_int(
            user_absent_timeout, "user_absent_timeout", _MIN_USER_ABSENT_TIMEOUT, None
        )
    if max_duration is not None:
        body["max_duration"] = _check_int(
            max_duration, "max_duration", _MIN_MAX_DURATION, _MAX_MAX_DURATION
        )
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
        _check_json(dict(extra), "extra")
    return body


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
            raise ConfigurationError(
                "text-echo engine needs tts.voice_id, a non-empty string"
            )
    if kind == "external":
        _check_external(engine)
    _check_json(engine, "engine")
    return dict(engine)


def _check_external(engine: Mapping[str, Any]) -> None:
    parts = urllib.parse.urlsplit(engine["url"])
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigurationError("external engine url must be a ws:// or wss:// URL")
    headers = engine.get("headers")
    if headers is not None and (
        not isinstance(headers, Mapping)
        or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        )
    ):
        raise ConfigurationError("external engine headers must map strings to strings")
    audio = engine.get("audio")
    if audio is not None:
        user = audio.get("user") if isinstance(audio, Mapping) else None
        rate = user.get("sample_rate") if isinstance(user, Mapping) else None
        _check_int(rate, "user_sample_rate", 1, None)


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value


def _check_int(value: object, name: str, low: int, high: int | None) -> int:
    """An int (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigurationError(f"{name} must be {bounds}, got {value}")
    return value


def _check_json(value: object, name: str) -> None:
    _encode_json(value, name)


def _encode_json(value: object, name: str) -> bytes:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} is not JSON-serialisable: {exc}") from None


def _resolve_key(given: str | None, variable: str, what: str) -> str:
    key = given if given is not None else os.environ.get(variable)
    if not key:
        raise ConfigurationError(f"{what} is needed: pass api_key or set {variable}")
    return key


def _check_key(key: object) -> str:
    """Refuse keys that could inject headers or fail to encode."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError("the API key must be a non-empty string")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigurationError(
            "the API key contains whitespace, control or non-ASCII characters"
        )
    return key


def _check_base_url(url: str) -> str:
    """``https://`` URL (``http://`` only for loopback hosts), without a trailing slash."""
    if not isinstance(url, str):
        raise ConfigurationError("base_url must be a string")
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"base_url must be an http(s) URL with a host, got {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise ConfigurationError("base_url must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError(
            f"base_url must use https:// (http:// only for loopback hosts), got {url!r}"
        )
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path, "", "")
    ).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
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
        return (_check_seconds(connect), _check_seconds(read))
    return _check_seconds(timeout)


def _check_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            "timeout must be seconds (a number) or a (connect, read) pair"
        )
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError("timeout seconds must be positive and finite")
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


def _known_secrets(*extra: str | None) -> list[str]:
    """``extra`` plus every session token this process has received, for redaction."""
    with _seen_tokens_lock:
        return [s for s in (*extra, *_seen_tokens) if s]


def _collect_secrets(value: object, found: list[str], secret: bool = False) -> None:
    """Append every credential-looking string inside a JSON-like value to ``found``."""
    if isinstance(value, str):
        if secret:
            found.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            lowered = str(key).lower()
            _collect_secrets(
                item, found, secret or lowered in _SECRET_KEYS or lowered == "headers"
            )
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_secrets(item, found, secret)


def _redact_json(
    value: Any, secrets: Sequence[str | None] = (), secret: bool = False
) -> Any:
    """A copy of a JSON value with credentials (by key, header or known value) as ``***``."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            lowered = str(key).lower()
            hidden = secret or lowered in _SECRET_KEYS or lowered == "headers"
            out[key] = _redact_json(item, secrets, hidden)
        return out
    if isinstance(value, list):
        return [_redact_json(item, secrets, secret) for item in value]
    if isinstance(value, str):
        if secret and value != _MINTED:
            return _REDACTED
        return _redact_text(value, secrets)
    return value


_USERINFO = re.compile(r"//[^/@\s]+@")


def _redact_text(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` with every known secret, and URL credentials, replaced by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return _USERINFO.sub("//***@", text)


_TAGS = re.compile(r"<[^>]*>")


def _plain_text(text: str) -> str:
    """An error body as one line: HTML tags dropped, whitespace folded."""
    return " ".join(_TAGS.sub(" ", text).split())


def _render_detail(detail: Any) -> str:
    """A server ``detail`` (string, FastAPI list, or any JSON) as one readable line."""
    if detail is None or detail == "":
        return ""
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list) and all(isinstance(item, Mapping) for item in detail):
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            msg = str(item.get("msg", item))
            parts.append(f"{loc}: {msg}" if loc else msg)
        text = "; ".join(parts)
    else:
        text = json.dumps(detail, default=str)
    text = " ".join(text.split())
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 3] + "..."
    return text


if __name__ == "__main__":
    sys.exit(main())
