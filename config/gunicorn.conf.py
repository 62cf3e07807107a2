"""gunicorn settings for `voucher serve` and the container image."""

import multiprocessing
import os

bind = os.environ.get("VOUCHER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("VOUCHER_WORKERS", multiprocessing.cpu_count() * 2))
worker_class = "sync"
timeout = 120
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app logs one structured line per request itself
errorlog = "-"
loglevel = os.environ.get("VOUCHER_LOG_LEVEL", "info")
