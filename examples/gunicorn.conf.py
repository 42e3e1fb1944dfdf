"""gunicorn settings for the examples, for every worker class (sync, gthread, gevent).

gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples flask_app:app
gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples django_app:application

This file runs in gunicorn's master, before a gevent worker patches the standard
library: it imports nothing of ours (that would import requests, and ssl, too
early; so would --preload with -k gevent).
"""

bind = "127.0.0.1:8000"
# gunicorn's default timeout (30 s) stays: a start request's calls end within
# av.deadline(20), and ending a session a failed create may have made within
# 5 s more (av.CLEANUP_GRACE).


def post_worker_init(worker):
    # In each worker, once the app is loaded (and gevent has patched, with
    # -k gevent): it opens its own keep-alive connections (Avaturn, and OpenAI
    # or Cartesia when their key is set) before its first visitor, whose start
    # then costs what every later one does. Nothing is sent.
    import avaturn_session as av

    av.warm()
