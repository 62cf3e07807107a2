# The compute-voucher service: API (gunicorn) or scheduler, same image.
#   docker build -t compute-voucher .
#   docker run -e VOUCHER_DATABASE_URL=postgresql+psycopg://... -p 8000:8000 compute-voucher
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOUCHER_BIND=0.0.0.0:8000 \
    VOUCHER_WORKERS=4

WORKDIR /app
RUN groupadd --system --gid 10001 voucher \
 && useradd --system --uid 10001 --gid voucher --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin voucher

# The project installs in place (editable) so that migrations/ and config/ stay beside the
# code, where `voucher db upgrade` and gunicorn's config file find them.
# Dependencies first, from the lock (exact versions, hashes checked), so code changes reuse the layer.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt

COPY pyproject.toml alembic.ini ./
COPY voucher ./voucher
COPY console ./console
COPY api ./api
COPY adapters ./adapters
COPY billing ./billing
COPY metering ./metering
COPY kernel ./kernel
COPY config ./config
COPY migrations ./migrations
RUN pip install --no-deps --no-build-isolation -e . \
 && mkdir -p /app/var \
 && chown voucher:voucher /app/var

USER voucher
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

# Metrics of every worker: gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR (/app/var/...),
# empties it at start and marks dead workers.
CMD ["gunicorn", "-c", "config/gunicorn.conf.py", "voucher.wsgi:app"]
