"""How many of avaturn_session's functions a failing create enters.

Run from the repository root:  python benchmarks/functions_entered.py

A fresh client creates against a loopback server that answers 500, with
max_retries=0; every function of the module entered on the way (the client's
own, the transport's, our connections', the error's) is listed once.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import avaturn_session as av


class Failing(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = json.dumps({"detail": "boom"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = av.AvaturnClient("key-123", base_url=url, max_retries=0)
    entered: dict[str, int] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == av.__file__:
            entered.setdefault(frame.f_code.co_qualname, frame.f_code.co_firstlineno)

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        client.create_session()
    except av.InternalServerError:
        pass
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        server.shutdown()
    named = {name for name in entered if "<" not in name}
    for name, line in sorted(entered.items(), key=lambda item: item[1]):
        print(f"{line:5d}  {name}")
    print(
        f"a failing create entered {len(named)} functions of the module "
        f"(and {len(entered) - len(named)} comprehensions)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
