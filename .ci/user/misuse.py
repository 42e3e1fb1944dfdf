# Misuse a type checker must report, one error per line marked "error".
import avaturn_session as av

av.create_session(max_duration="long")  # error: not an int
av.AvaturnClient(timeout="5")  # error: not seconds
created = av.create_session()
created.token = "x"  # error: read-only
task: int = av.say("s1", "hi")  # error: say returns the task id, a str
av.mint_cartesia_access_token(expires=60)  # error: no such parameter
av.deadline("20")  # error: seconds, not a string
av.say("s1", "hi", deadline="soon")  # error: not seconds
