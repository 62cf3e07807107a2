"""gunicorn's gthread worker, except that request heads are read by the event loop, not a thread.

Why (issue 15, item 4): a sync worker, and gthread's own threads, read a request's head with a
blocking recv(). A client that sends its headers a byte at a time holds that worker (or thread)
for as long as it likes, so as many slow clients as workers × threads stop the service,
`/healthz` included. Here the worker's selector loop collects each head without blocking; only
a complete head (the blank line after the headers) is handed to a thread, already buffered.
A head that is not complete within `head_timeout` seconds is dropped by the loop, as gthread
drops idle kept-alive connections. Slow clients therefore cost a socket and a few bytes of
buffer each (up to `worker_connections` per worker), never a thread.

Not covered here, and left to a buffering proxy in front when it matters (docs/OPERATIONS.md):
a body trickled slowly after a fast head still occupies its thread while the app reads it, and
TLS (gunicorn's own `certfile`) falls back to gthread's behaviour.

This relies on gthread's internals (`accept`, `pending_conns`, `on_client_socket_readable`,
`TConn`); tests/test_slow_clients.py runs it against the gunicorn the lock installs.
"""

from __future__ import annotations

import errno
import selectors
import time
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

# gunicorn's limits (request line 4094 bytes, 100 fields of 8190) reject larger heads with a
# 4xx; past this size the head goes to a thread as it is and the parser answers that.
MAX_BUFFERED_HEAD = 64 * 1024


class HeadBufferingWorker(ThreadWorker):
    """gthread with request heads read in the event loop (see the module docstring)."""

    head_timeout: float = 10.0  # seconds; config/gunicorn.conf.py sets it from VOUCHER_HEADER_TIMEOUT

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        if self.cfg.is_ssl:  # the TLS handshake happens in the thread (gthread's own path)
            conn.sock.setblocking(True)
            self.enqueue_req(conn)
            return
        self._await_head(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: its head is collected like a new one's."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn) -> None:
        conn.head = bytearray()
        # pending_conns holds only these (no connection of ours is ever deferred: each reaches
        # a thread with its head complete), all with the same timeout, so it stays sorted
        # and gthread's murder_pending() closes the late ones.
        conn.timeout = time.monotonic() + self.head_timeout
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn, _sock) -> None:
        try:
            data = conn.sock.recv(MAX_BUFFERED_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its head was complete
            self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.head += data
        if b"\r\n\r\n" not in conn.head and b"\n\n" not in conn.head \
                and len(conn.head) < MAX_BUFFERED_HEAD:
            return
        self._forget(conn)
        if conn.parser is None:  # a new connection: plain HTTP/1.x (TLS never comes here)
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = None
        conn.data_ready = True
        self.enqueue_req(conn)

    def _forget(self, conn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
