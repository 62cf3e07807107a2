"""gunicorn settings for `voucher serve` and the container image."""

import multiprocessing
import os

bind = os.environ.get("VOUCHER_BIND", "127.0.0.1:8000")
# CPUs + 1: on 2 cores with PostgreSQL on the same machine 3 workers beat 4 (docs/BENCHMARKS.md).
workers = int(os.environ.get("VOUCHER_WORKERS", multiprocessing.cpu_count() + 1))
# Slow clients (issue 15): a sync worker reads each request's head with a blocking recv(), so
# as many byte-a-second clients as workers stop the service. HeadBufferingWorker is gthread
# whose event loop collects each head without blocking and gives a thread only a complete one;
# a head not complete within VOUCHER_HEADER_TIMEOUT seconds is dropped. gevent would do it too
# but turns api.hotread's per-thread connections into one per greenlet and blocks on its
# libpq calls; see docs/OPERATIONS.md "Slow clients".
worker_class = "config.gunicorn_worker.HeadBufferingWorker"
threads = int(os.environ.get("VOUCHER_THREADS", 4))
worker_connections = 1000  # open connections per worker, slow ones included
timeout = 120
graceful_timeout = 30
keepalive = 5

from config.gunicorn_worker import HeadBufferingWorker  # noqa: E402

HeadBufferingWorker.head_timeout = float(os.environ.get("VOUCHER_HEADER_TIMEOUT", 10))
accesslog = None  # the app logs one structured line per request itself
# What gunicorn refuses before the app sees a request (answered by _json_error below):
# a request line over 4094 bytes is 414; over 100 header fields, or one over 8190 bytes, 431.
# The API's longest line (a list with every filter and a cursor) is under 400 bytes.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
errorlog = "-"
loglevel = os.environ.get("VOUCHER_LOG_LEVEL", "info")

# --- Prometheus multiprocess mode --------------------------------------------------------
# prometheus-client chooses how it stores values when it is first imported, so the
# directory must be in the environment before any worker imports it. Workers fork from this
# master without preloading the app, so setting it here (`voucher serve` sets it too) is
# early enough; the master itself never imports prometheus-client before this line.
MULTIPROC_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "var",
                 "prometheus-multiproc"))


def on_starting(server):
    """Start from an empty metrics directory: files of a previous run's pids would be summed in."""
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    for name in os.listdir(MULTIPROC_DIR):
        if name.endswith(".db"):  # only prometheus-client's files, whatever else is there
            os.remove(os.path.join(MULTIPROC_DIR, name))


def child_exit(server, worker):
    """A dead worker's live gauges stop counting; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# gunicorn's own lines (boot, worker start and exit) as JSON too, like the app's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "kernel.logging.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": []},  # each worker's app installs its own handler
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}

# --- gunicorn's own error answers as the API's error body ----------------------------------
# gunicorn answers requests it cannot parse (414, 431, 400, …) itself, with an HTML page,
# before any worker runs the app. Every worker class writes it through gunicorn.util.write_error,
# replaced here (in the master, so every forked worker has it) by the Stripe-style JSON body.
_ERROR_CODES = {400: "bad_request", 403: "forbidden", 414: "request_line_too_long",
                417: "expectation_failed", 431: "request_headers_too_large",
                500: "internal_error", 501: "not_implemented"}


def _json_error(sock, status_int, reason, mesg):
    import json

    from gunicorn.util import write_nonblock

    body = json.dumps({"error": {
        "type": "api_error" if status_int >= 500 else "invalid_request_error",
        "code": _ERROR_CODES.get(status_int, "bad_request"),
        "message": f"{reason}: {mesg}"[:300] if mesg else reason,
    }}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    write_nonblock(sock, head + body)


def _answer_errors_as_json():
    from gunicorn import util

    util.write_error = _json_error


_answer_errors_as_json()

# gunicorn 27's control socket lives in $HOME; the service needs none (and several test
# servers on one machine would share its path).
control_socket_disable = True
