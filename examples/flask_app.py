"""A Flask backend for an Avaturn.Live avatar, on avaturn-session: fit to copy.

Run:  FLASK_SECRET_KEY=... AVATURN_API_KEY=... OPENAI_API_KEY=... \\
      gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples flask_app:app
(or ``flask --app examples/flask_app.py --debug run`` while developing).
Then open http://127.0.0.1:8000/ (5000 with flask). The browser only ever sees
its own session token; the Avaturn and OpenAI keys stay here.

What it shows:
- each Avaturn session belongs to the visitor who started it (Flask's signed
  session cookie): say and end answer 404 for anyone else's session, and
  nothing is forwarded to Avaturn; one live session per visitor;
- the page ends the session on Stop and when the tab goes away (a beacon to
  ``POST /avatar/session/<id>/end``);
- cross-site requests are refused: JSON endpoints need a JSON body, and every
  state-changing request must come from this site's own pages;
- visitors get a generic message when Avaturn fails; the detail goes to the log;
- each request's Avaturn calls share one budget, within gunicorn's timeout;
- it refuses to start without ``FLASK_SECRET_KEY`` (outside debug mode): every
  worker must sign cookies with the same key, or a visitor's next request,
  served by another worker, could not end the session it started;
- the Web SDK version is pinned once (``av.WEB_SDK_URL``); ``AVATURN_SDK_URL``
  serves another copy (offline deployments, tests).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, request, session

import avaturn_session as av

app = Flask(__name__)
log = logging.getLogger(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY")
if not app.secret_key:
    if os.environ.get("FLASK_DEBUG") != "1":
        # A key per worker process would make each worker reject the others'
        # cookies: a visitor could not end the session they started.
        raise RuntimeError(
            "FLASK_SECRET_KEY is not set: set it to the same random value for "
            "every worker (python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    app.secret_key = secrets.token_hex(32)  # flask --debug: one process only
    log.warning("FLASK_SECRET_KEY is not set: a random key, for debug mode only")
app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

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


@app.before_request
def refuse_cross_site_requests() -> None:
    """A page on another site cannot make this visitor's browser start or end sessions."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    # Browsers say where a request comes from; non-browser clients say nothing.
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None and site not in ("same-origin", "none"):
        abort(403)
    if site is None and origin is not None and origin != request.host_url.rstrip("/"):
        abort(403)
    # A cross-site <form> can post text/plain or form data, never JSON.
    json_endpoint = request.endpoint != "end_on_leave"
    if request.method == "POST" and json_endpoint and not request.is_json:
        abort(415)


def owned_session(session_id: str) -> str:
    """The visitor's own live session, or a 404 (nothing is sent to Avaturn)."""
    if session_id != session.get(OWNED):
        abort(404)
    return session_id


@app.post("/avatar/session")
@av.deadline(BUDGET)
def start_avatar() -> Response:
    """Mint an OpenAI client secret, create the session, return the Web SDK options."""
    # REAL APP: require a logged-in user here and rate-limit per user: every
    # call mints a credential and starts a billed session.
    previous = session.pop(OWNED, None)
    if previous is not None:  # one live session per visitor
        end_quietly(previous)
    secret = av.mint_openai_client_secret(REALTIME_SESSION, expires_in=600)
    created = av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=30
    )
    session[OWNED] = created.session_id
    return jsonify(session_id=created.session_id, **created.web_sdk_options())


@app.post("/avatar/session/<session_id>/say")
@av.deadline(BUDGET)
def say(session_id: str) -> Response:
    """Queue text for the avatar to speak (text-echo sessions)."""
    payload: Any = request.get_json(silent=True) or {}
    text = payload.get("text") if isinstance(payload, dict) else None
    return jsonify(task_id=av.say(owned_session(session_id), text))


@app.delete("/avatar/session/<session_id>")
@av.deadline(BUDGET)
def end_avatar(session_id: str) -> Response:
    """End the visitor's session: Stop (DELETE), or the page's beacon when its tab
    goes away (POST .../end, registered below); safe to call twice."""
    terminated = av.terminate_session(owned_session(session_id))
    session.pop(OWNED, None)
    return jsonify(terminated=terminated)


# A beacon cannot send JSON: its own endpoint, exempt from the JSON rule above.
app.add_url_rule(
    "/avatar/session/<session_id>/end", "end_on_leave", end_avatar, methods=["POST"]
)


def end_quietly(session_id: str) -> None:
    try:
        av.terminate_session(session_id)
    except av.AvaturnError as exc:  # it also ends by itself after user_absent_timeout
        log.warning("could not end session %s: %s", session_id, exc)


@app.errorhandler(403)
@app.errorhandler(404)
@app.errorhandler(415)
def http_error(exc: Any) -> tuple[Response, int]:
    """Refusals as JSON, like every other answer of this API."""
    return jsonify(error=exc.name, message=exc.description), exc.code


@app.errorhandler(av.AvaturnError)
def avaturn_failed(exc: av.AvaturnError) -> tuple[Response, int]:
    """The detail goes to the log (secrets already masked); visitors get a
    generic message: not our configuration, keys or Avaturn's internals."""
    log.error("avatar request failed: %s: %s", type(exc).__name__, exc)
    message = "The avatar is unavailable right now. Please try again later."
    return jsonify(error="avatar_unavailable", message=message), 502


@app.get("/")
def index() -> Response:
    """The page that starts, stops and shows the avatar with the Web SDK."""
    config = {"sdkUrl": os.environ.get("AVATURN_SDK_URL") or av.WEB_SDK_URL}
    return Response(
        PAGE.replace("{{CONFIG}}", script_json(config)), mimetype="text/html"
    )


def script_json(value: object) -> str:
    """JSON that cannot close the <script> element it sits in."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


if __name__ == "__main__":  # a single process: warm up once, then serve
    av.warm()
    app.run(debug=False)
