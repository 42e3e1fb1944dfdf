"""A Flask backend for an Avaturn.Live avatar, on avaturn-session.

Run:  AVATURN_API_KEY=... OPENAI_API_KEY=... flask --app examples/flask_app.py run
Then open http://127.0.0.1:5000/ . The browser only ever sees the session
token; the Avaturn and OpenAI keys stay here.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request

import avaturn_session as av

app = Flask(__name__)

REALTIME_SESSION = {
    "model": "gpt-realtime",
    "instructions": "You are a friendly guide. Keep answers short.",
    "audio": {"output": {"voice": "marin"}},
}


@app.post("/avatar/session")
def start_avatar() -> Response:
    """Mint an OpenAI client secret, create the session, return the Web SDK options."""
    secret = av.mint_openai_client_secret(REALTIME_SESSION, expires_in=600)
    session = av.create_session(
        av.openai_realtime_engine(secret), user_absent_timeout=30
    )
    return jsonify(session_id=session.session_id, **session.web_sdk_options())


@app.post("/avatar/session/<session_id>/say")
def say(session_id: str) -> Response:
    """Queue text for the avatar to speak (text-echo sessions)."""
    payload: dict[str, Any] = request.get_json(silent=True) or {}
    return jsonify(task_id=av.say(session_id, payload.get("text")))


@app.delete("/avatar/session/<session_id>")
def end_avatar(session_id: str) -> Response:
    """End the session; safe to call twice."""
    return jsonify(terminated=av.terminate_session(session_id))


@app.errorhandler(av.AvaturnError)
def avaturn_failed(exc: av.AvaturnError) -> tuple[Response, int]:
    """Bad input is the caller's 400; anything upstream is a 502. No secret in either."""
    status = 400 if isinstance(exc, av.ConfigurationError) else 502
    return jsonify(error=type(exc).__name__, message=str(exc)), status


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Avatar</title>
<div id="avatar" style="width: 480px; height: 480px"></div>
<button id="start">Start</button> <button id="stop" disabled>Stop</button>
<script type="module">
  import { AvaturnHead } from "https://esm.sh/@avaturn-live/web-sdk";
  let sessionId = null, head = null;
  document.getElementById("start").onclick = async () => {
    const r = await fetch("/avatar/session", { method: "POST" });
    const s = await r.json();
    if (!r.ok) { alert(s.message); return; }
    sessionId = s.session_id;
    head = new AvaturnHead(document.getElementById("avatar"),
                           { sessionToken: s.sessionToken, apiHost: s.apiHost });
    await head.init();
    document.getElementById("stop").disabled = false;
  };
  document.getElementById("stop").onclick = async () => {
    await fetch(`/avatar/session/${sessionId}`, { method: "DELETE" });
    document.getElementById("stop").disabled = true;
  };
</script>
"""


@app.get("/")
def index() -> Response:
    """A tiny page that starts the avatar with the Web SDK."""
    return Response(PAGE, mimetype="text/html")


if __name__ == "__main__":
    app.run(debug=False)
