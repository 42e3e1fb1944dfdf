"""A single-file Django backend for an Avaturn.Live avatar, on avaturn-session.

Run:  DJANGO_SECRET_KEY=... AVATURN_API_KEY=... OPENAI_API_KEY=... \\
      python examples/django_app.py runserver
Then open http://127.0.0.1:8000/ . The same endpoints and page as
examples/flask_app.py: each session belongs to the visitor who started it
(Django's signed-cookie session), say and end answer 404 for anyone else's,
one live session per visitor, the page ends the session on Stop and when the
tab goes away. Django's CSRF protection stays on: the page sends the token.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import django
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.urls import path
from django.views.decorators.http import require_http_methods

import avaturn_session as av

if not settings.configured:
    secret_key = os.environ.get("DJANGO_SECRET_KEY")
    if not secret_key:
        warnings.warn(
            "DJANGO_SECRET_KEY is not set: using a random per-process key", stacklevel=1
        )
        secret_key = secrets.token_hex(32)
    settings.configure(
        DEBUG=False,
        SECRET_KEY=secret_key,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        INSTALLED_APPS=[],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        SESSION_COOKIE_HTTPONLY=True,
    )
    django.setup()

REALTIME_SESSION = {
    "model": "gpt-realtime",
    "instructions": "You are a friendly guide. Keep answers short.",
    "audio": {"output": {"voice": "marin"}},
}
PAGE = (Path(__file__).with_name("avatar_page.html")).read_text(encoding="utf-8")
OWNED = "avaturn_session_id"  # the visitor's live session, in the signed cookie

View = Callable[..., HttpResponse]


def errors_as_json(view: View) -> View:
    """Bad input is the caller's 400; anything upstream is a 502. No secret in either."""

    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except Http404:
            return JsonResponse({"error": "Not Found"}, status=404)
        except av.AvaturnError as exc:
            status = 400 if isinstance(exc, av.ConfigurationError) else 502
            body = {"error": type(exc).__name__, "message": str(exc)}
            return JsonResponse(body, status=status)

    return wrapped


def owned_session(request: HttpRequest, session_id: str) -> str:
    """The visitor's own live session, or a 404 (nothing is sent to Avaturn)."""
    if session_id != request.session.get(OWNED):
        raise Http404("no such session")
    return session_id


@require_http_methods(["GET"])
def index(request: HttpRequest) -> HttpResponse:
    """The page that starts, stops and shows the avatar with the Web SDK."""
    config = {
        "sdkUrl": os.environ.get("AVATURN_SDK_URL") or av.WEB_SDK_URL,
        "csrfToken": get_token(request),
    }
    text = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
    return HttpResponse(PAGE.replace("{{CONFIG}}", text))


@require_http_methods(["POST"])
@errors_as_json
def start_avatar(request: HttpRequest) -> HttpResponse:
    """Mint an OpenAI client secret, create the session, return the Web SDK options."""
    # REAL APP: require a logged-in user here (@login_required) and rate-limit
    # per user: every call mints a credential and starts a billed session.
    previous = request.session.pop(OWNED, None)
    if previous is not None:  # one live session per visitor
        try:
            av.terminate_session(previous)
        except av.AvaturnError as exc:  # it also ends after user_absent_timeout
            warnings.warn(f"could not end session {previous}: {exc}", stacklevel=1)
    secret = av.mint_openai_client_secret(REALTIME_SESSION, expires_in=600)
    created = av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=30
    )
    request.session[OWNED] = created.session_id
    return JsonResponse({"session_id": created.session_id, **created.web_sdk_options()})


@require_http_methods(["POST"])
@errors_as_json
def say(request: HttpRequest, session_id: str) -> HttpResponse:
    """Queue text for the avatar to speak (text-echo sessions)."""
    owned = owned_session(request, session_id)
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        payload = {}
    text = payload.get("text") if isinstance(payload, dict) else None
    return JsonResponse({"task_id": av.say(owned, text)})  # type: ignore[arg-type]


@require_http_methods(["DELETE", "POST"])
@errors_as_json
def end_avatar(request: HttpRequest, session_id: str) -> HttpResponse:
    """End the visitor's session: Stop (DELETE), or the page's beacon when its tab
    goes away (POST .../end, CSRF token in the form body); safe to call twice."""
    terminated = av.terminate_session(owned_session(request, session_id))
    request.session.pop(OWNED, None)
    return JsonResponse({"terminated": terminated})


urlpatterns = [
    path("", index),
    path("avatar/session", start_avatar),
    path("avatar/session/<str:session_id>/say", say),
    path("avatar/session/<str:session_id>/end", end_avatar),
    path("avatar/session/<str:session_id>", end_avatar),
]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
