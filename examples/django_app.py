"""A single-file Django backend for an Avaturn.Live avatar, on avaturn-session.

Run:  AVATURN_API_KEY=... OPENAI_API_KEY=... python examples/django_app.py runserver
The same three endpoints as examples/flask_app.py.
"""

from __future__ import annotations

import json
import os
import sys

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

import avaturn_session as av

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret"),
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
    )
    django.setup()

REALTIME_SESSION = {
    "model": "gpt-realtime",
    "instructions": "You are a friendly guide. Keep answers short.",
    "audio": {"output": {"voice": "marin"}},
}


def _errors_as_json(view):  # type: ignore[no-untyped-def]
    """Bad input is the caller's 400; anything upstream is a 502. No secret in either."""

    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)  # type: ignore[no-any-return]
        except av.AvaturnError as exc:
            status = 400 if isinstance(exc, av.ConfigurationError) else 502
            body = {"error": type(exc).__name__, "message": str(exc)}
            return JsonResponse(body, status=status)

    return wrapped


@csrf_exempt
@require_http_methods(["POST"])
@_errors_as_json
def start_avatar(request: HttpRequest) -> HttpResponse:
    """Mint an OpenAI client secret, create the session, return the Web SDK options."""
    secret = av.mint_openai_client_secret(REALTIME_SESSION, expires_in=600)
    session = av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=30
    )
    return JsonResponse({"session_id": session.session_id, **session.web_sdk_options()})


@csrf_exempt
@require_http_methods(["POST"])
@_errors_as_json
def say(request: HttpRequest, session_id: str) -> HttpResponse:
    """Queue text for the avatar to speak (text-echo sessions)."""
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        payload = {}
    text = payload.get("text") if isinstance(payload, dict) else None
    return JsonResponse({"task_id": av.say(session_id, text)})  # type: ignore[arg-type]


@csrf_exempt
@require_http_methods(["DELETE"])
@_errors_as_json
def end_avatar(request: HttpRequest, session_id: str) -> HttpResponse:
    """End the session; safe to call twice."""
    return JsonResponse({"terminated": av.terminate_session(session_id)})


urlpatterns = [
    path("avatar/session", start_avatar),
    path("avatar/session/<str:session_id>/say", say),
    path("avatar/session/<str:session_id>", end_avatar),
]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
