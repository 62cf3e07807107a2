"""A real HTTP receiver on loopback for the webhook tests: records every POST it answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """`answer` is the status it gives; `received` the (headers, body) of each POST answered 2xx,
    `refused` those answered otherwise. start()/stop() bring it up and down on one port."""

    def __init__(self, port: int | None = None, answer: int = 200, delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.answer, self.delay = answer, delay
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.answer
                time.sleep(receiver.delay)
                (receiver.received if 200 <= status < 300 else receiver.refused).append(
                    (dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def event_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in self.received]
