# Types of avaturn_session for installed users: a single module cannot carry a
# py.typed marker (PEP 561), so its types ship beside it as this stub-only
# package. CI checks it against the module with mypy's stubtest: it cannot drift.

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypedDict

import requests
from typing_extensions import Self, Unpack  # noqa: UP035 - users on Python 3.10 too

__all__ = [
    "CLEANUP_GRACE",
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
    "READY_MIN_LIFE",
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
    "deadline",
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

__version__: str

CLEANUP_GRACE: float
DEFAULT_BASE_URL: str
WEB_SDK_URL: str
DEFAULT_TIMEOUT: tuple[float, float]
DEFAULT_DEADLINE: float
DEFAULT_MAX_RETRIES: int
INITIAL_RETRY_DELAY: float
MAX_RETRY_DELAY: float
MAX_RETRY_AFTER: float
DEFAULT_POOL_MAXSIZE: int
KEEPALIVE_EXPIRY: float
MAX_RESPONSE_BYTES: int
MAX_ERROR_BODY_BYTES: int
READY_MIN_LIFE: float

class AvaturnError(Exception):
    session_id: str | None
    def __init__(
        self, message: str = "", fields: Mapping[str, Any] | None = None, /, **more: Any
    ) -> None: ...

class ConfigurationError(AvaturnError, ValueError): ...

class CredentialError(AvaturnError):
    provider: str

class APIConnectionError(AvaturnError):
    method: str
    path: str
    request_sent: bool

class APITimeoutError(APIConnectionError): ...

class APIResponseError(AvaturnError):
    status_code: int
    method: str
    path: str

class APIStatusError(AvaturnError):
    status_code: int
    detail: Any
    request_id: str | None
    method: str
    path: str
    body: Any
    retry_after: float | None
    errors: list[Any]

class BadRequestError(APIStatusError): ...
class AuthenticationError(APIStatusError): ...
class PermissionDeniedError(APIStatusError): ...
class NotFoundError(APIStatusError): ...
class GoneError(APIStatusError): ...
class UnprocessableEntityError(APIStatusError): ...
class RateLimitError(APIStatusError): ...
class InternalServerError(APIStatusError): ...

class AvaturnSession(NamedTuple):
    session_id: str
    token: str
    api_host: str
    def web_sdk_options(self) -> dict[str, str]: ...
    def web_sdk_html(
        self,
        *,
        sdk_url: str | None = None,
        audio: bool = False,
        width: str = "100%",
        height: str = "480px",
    ) -> str: ...

class _CreateOptions(TypedDict, total=False):
    avatar_id: str | None
    background: str | None
    render_model: str | None
    user_absent_timeout: int | None
    max_duration: int | None
    extra: Mapping[str, Any] | None
    timeout: float | tuple[float, float] | None
    deadline: float | None

def openai_realtime_engine(client_secret: str) -> dict[str, Any]: ...
def cartesia_engine(access_token: str, agent_id: str) -> dict[str, Any]: ...
def text_echo_engine(voice_id: str) -> dict[str, Any]: ...
def external_engine(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    user_sample_rate: int | None = None,
) -> dict[str, Any]: ...
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
) -> str: ...
def mint_cartesia_access_token(
    *,
    api_key: str | None = None,
    expires_in: int = 300,
    base_url: str | None = None,
    ready: bool = False,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> str: ...

class AvaturnClient:
    base_url: str
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | tuple[float, float] = ...,
        max_retries: int = ...,
        http_session: requests.Session | None = None,
        deadline: float = ...,
    ) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def close(self) -> None: ...
    def warm(self, *, deadline: float | None = None) -> bool: ...
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
    ) -> AvaturnSession: ...
    def say(
        self,
        session_id: str,
        text: str,
        *,
        timeout: float | tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> str: ...
    def terminate_session(
        self,
        session_id: str,
        *,
        timeout: float | tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> bool: ...
    def session(
        self,
        engine: Mapping[str, Any] | None = None,
        **options: Unpack[_CreateOptions],
    ) -> contextlib.AbstractContextManager[AvaturnSession]: ...

def create_session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> AvaturnSession: ...
def say(
    session_id: str,
    text: str,
    *,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> str: ...
def terminate_session(
    session_id: str,
    *,
    timeout: float | tuple[float, float] | None = None,
    deadline: float | None = None,
) -> bool: ...
def session(
    engine: Mapping[str, Any] | None = None, **options: Unpack[_CreateOptions]
) -> contextlib.AbstractContextManager[AvaturnSession]: ...
def deadline(seconds: float) -> contextlib._GeneratorContextManager[None]: ...
def warm(*, deadline: float | None = None) -> list[str]: ...
def close_shared_clients() -> None: ...
def main(argv: Sequence[str] | None = None) -> int: ...
