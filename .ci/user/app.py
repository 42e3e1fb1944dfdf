# A user's app, type-checked outside the checkout against the installed package.
import avaturn_session as av

secret: str = av.mint_openai_client_secret({"model": "gpt-realtime"}, expires_in=60)
with av.session(av.openai_realtime_engine(secret), user_absent_timeout=30) as s:
    options: dict[str, str] = s.web_sdk_options()
client = av.AvaturnClient(timeout=(3.0, 10.0), deadline=20.0)
created: av.AvaturnSession = client.create_session(max_duration=600)
ended: bool = av.terminate_session(created.session_id)
cold: list[str] = av.warm()
try:
    av.say(created.session_id, "hi")
except av.RateLimitError as exc:
    wait: float | None = exc.retry_after
with av.deadline(20):  # one budget for a whole web request
    secret = av.mint_openai_client_secret(ready=True, deadline=10.0)
    started = av.create_session(av.openai_realtime_engine(secret), timeout=(2.0, 5.0))
    ended = av.terminate_session(started.session_id, deadline=5)


@av.deadline(20)
def start_view() -> dict[str, str]:
    return av.create_session().web_sdk_options()


session_id, token, api_host = started  # a named tuple
