"""A single-file Django backend for an Avaturn.Live avatar, on avaturn-session.

Run:  DJANGO_SECRET_KEY=... AVATURN_API_KEY=... OPENAI_API_KEY=... \\
      gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples django_app:application
(or ``DJANGO_DEBUG=1 python examples/django_app.py runserver`` while developing).
Then open http://127.0.0.1:8000/ . The same endpoints and page as
examples/flask_app.py: each session belongs to the visitor who started it
(Django's signed-cookie session), say and end answer 404 for anyone else's,
one live session per visitor, the page ends the session on Stop and when the
tab goes away. Django's CSRF protection stays on: the page sends the token.
Visitors get a generic message when Avaturn fails; the detail goes to the log.
Each request's Avaturn calls share one budget, within gunicorn's timeout.
Without ``DJANGO_SECRET_KEY`` it refuses to start (unless ``DJANGO_DEBUG=1``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.urls import path
from django.views.decorators.http import require_http_methods

import avaturn_session as av

log = logging.getLogger(__name__)
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
if not settings.configured:
    secret_key = os.environ.get("DJANGO_SECRET_KEY")
    if not secret_key:
        if not DEBUG:
            # A key per worker process would make each worker reject the others'
            # signed cookies: a visitor could not end the session they started.
            raise RuntimeError(
                "DJANGO_SECRET_KEY is not set: set it to the same random value for "
                "every worker (python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        secret_key = secrets.token_hex(32)  # DJANGO_DEBUG=1: one process only
        log.warning("DJANGO_SECRET_KEY is not set: a random key, for debug only")
    settings.configure(
        DEBUG=DEBUG,
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
# Seconds for all of a request's Avaturn calls: gunicorn's 30 s worker timeout,
# less av.CLEANUP_GRACE (5 s) to end a session created too late, less a margin.
BUDGET = 20

View = Callable[..., HttpResponse]


def errors_as_json(view: View) -> View:
    """Errors as JSON. An Avaturn failure's detail goes to the log (secrets
    already masked); visitors get a generic message."""

    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except Http404:
            return JsonResponse({"error": "Not Found"}, status=404)
        except av.AvaturnError as exc:
            log.error("avatar request failed: %s: %s", type(exc).__name__, exc)
            message = "The avatar is unavailable right now. Please try again later."
            body = {"error": "avatar_unavailable", "message": message}
            return JsonResponse(body, status=502)

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
@av.deadline(BUDGET)
def start_avatar(request: HttpRequest) -> HttpResponse:
    """Mint an OpenAI client secret, create the session, return the Web SDK options."""
    # REAL APP: require a logged-in user here (@login_required) and rate-limit
    # per user: every call mints a credential and starts a billed session.
    previous = request.session.pop(OWNED, None)
    if previous is not None:  # one live session per visitor
        try:
            av.terminate_session(previous)
        except av.AvaturnError as exc:  # it also ends after user_absent_timeout
            log.warning("could not end session %s: %s", previous, exc)
    secret = av.mint_openai_client_secret(REALTIME_SESSION, expires_in=600)
    created = av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=30
    )
    request.session[OWNED] = created.session_id
    return JsonResponse({"session_id": created.session_id, **created.web_sdk_options()})


@require_http_methods(["POST"])
@errors_as_json
@av.deadline(BUDGET)
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
@av.deadline(BUDGET)
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


# What gunicorn, uWSGI and mod_wsgi load: django_app:application
application = get_wsgi_application()

if __name__ == "__main__":  # runserver: a single process, warmed up once
    from django.core.management import execute_from_command_line

    av.warm()
    execute_from_command_line(sys.argv)
