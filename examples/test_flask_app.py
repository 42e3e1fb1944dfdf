"""Testing a Flask app built on avaturn-session: no account, no network.

The library sends every call through `requests`, so `responses` answers them
all: Avaturn's, and OpenAI's client-secret mint (Cartesia's too). The shared
client behind the module-level functions follows the environment, so setting
the keys with monkeypatch is all the set-up it needs. Copy this next to your
app and point the import at it.

Run:  pytest examples/test_flask_app.py
"""

from __future__ import annotations

import pytest
import responses
from responses import matchers

AVATURN = "https://api.avaturn.live/api/v1/sessions"
OPENAI = "https://api.openai.com/v1/realtime/client_secrets"


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("FLASK_SECRET_KEY", "test-secret")
    monkeypatch.setenv("AVATURN_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for name in ("AVATURN_BASE_URL", "OPENAI_BASE_URL"):  # the real hosts' URLs
        monkeypatch.delenv(name, raising=False)
    import flask_app  # your app's module

    return flask_app.app


@pytest.fixture
def api():
    """Avaturn and OpenAI as `responses` mocks; every one must be called."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def started(api: responses.RequestsMock, session_id: str = "s1") -> None:
    api.post(OPENAI, json={"value": "ek_test", "expires_at": 2000000000})
    api.post(
        AVATURN,
        match=[
            matchers.json_params_matcher(
                {
                    "conversation_engine": {
                        "type": "openai-realtime",
                        "client_secret": "ek_test",
                    },
                    "user_absent_timeout": 30,
                }
            ),
            matchers.header_matcher(
                {"Authorization": "Bearer test-key"}, strict_match=False
            ),
        ],
        json={"session_id": session_id, "token": f"browser-token-{session_id}"},
    )


def test_visitor_starts_talks_to_and_ends_an_avatar(app, api):
    started(api)
    api.post(
        AVATURN + "/s1/tasks",
        match=[matchers.json_params_matcher({"text": "Hello"})],
        json={"task_id": "t1"},
    )
    api.delete(AVATURN + "/s1", status=204)
    visitor = app.test_client()
    answer = visitor.post("/avatar/session", json={}).get_json()
    assert answer == {
        "session_id": "s1",
        "sessionToken": "browser-token-s1",
        "apiHost": "https://api.avaturn.live",
    }
    say = visitor.post("/avatar/session/s1/say", json={"text": "Hello"})
    assert say.get_json() == {"task_id": "t1"}
    assert visitor.delete("/avatar/session/s1", json={}).get_json() == {
        "terminated": True
    }


def test_another_visitor_can_neither_drive_nor_end_it(app, api):
    started(api)
    app.test_client().post("/avatar/session", json={})
    stranger = app.test_client()
    assert stranger.delete("/avatar/session/s1", json={}).status_code == 404
    assert (
        stranger.post("/avatar/session/s1/say", json={"text": "x"}).status_code == 404
    )
    # nothing reached Avaturn for the stranger: only the mint and the create
    assert [call.request.method for call in api.calls] == ["POST", "POST"]


def test_an_avaturn_failure_reaches_the_visitor_as_a_generic_message(app, api, caplog):
    api.post(OPENAI, json={"value": "ek_test"})
    api.post(AVATURN, status=401, json={"detail": "Invalid API key"})
    answer = app.test_client().post("/avatar/session", json={})
    assert answer.status_code == 502
    assert "Invalid API key" not in answer.get_data(as_text=True)
    assert "401 Unauthorized" in caplog.text  # the detail is in your log
