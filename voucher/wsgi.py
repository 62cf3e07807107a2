"""WSGI entry point for gunicorn: `gunicorn voucher.wsgi:app`."""

from voucher.app import create_app

app = create_app()
