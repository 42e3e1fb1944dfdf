"""gunicorn settings for the examples, the place to warm each worker up.

gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples flask_app:app
gunicorn -w 4 -c examples/gunicorn.conf.py --chdir examples django_app:application
"""

import avaturn_session as av

bind = "127.0.0.1:8000"


def post_fork(server, worker):
    # Each worker opens its own keep-alive connections (Avaturn, and OpenAI or
    # Cartesia when their key is set) before its first visitor: its first
    # session start then costs what every later one does. Nothing is sent.
    av.warm()
