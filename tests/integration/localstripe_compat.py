"""localstripe as a real server for the tests, with the two invoice endpoints it lacks.

Why this exists: the statements service issues one invoice per enterprise and month from
pending invoice items (`POST /v1/invoices` without a subscription) and finalizes it
(`POST /v1/invoices/{id}/finalize`). Stock localstripe 1.15.10 answers the first with
404 "No upcoming invoices for customer" and has no route for the second (pinned by
`tests/adapters/test_stripe_client.py::test_stock_localstripe_cannot_create_or_finalize_standalone_invoices`;
when that test fails, localstripe has caught up and this launcher can go).

`serve_localstripe_with_invoicing` fills the gap with localstripe's *own* code: a
standalone invoice is its `Invoice(...)` model (which takes the customer's pending items
and computes subtotal and total the way the rest of localstripe does), and finalize calls
its `Invoice._finalize()`. Nothing else changes, so everything the tests check — customers,
items, totals, list pagination, error bodies — is localstripe's behaviour, not ours.

Run it as `python -m tests.integration.localstripe_compat PORT`; `start_localstripe` does
that on a free port and waits until it listens.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDidNotStart(RuntimeError):
    pass


def start_server(argv: list[str], port: int, log_path: Path, timeout: float = 20,
                 **popen) -> subprocess.Popen:
    """Start `argv` with output to `log_path` and wait until 127.0.0.1:`port` accepts."""
    with open(log_path, "wb") as log:  # a file, not a pipe: localstripe logs every request
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerDidNotStart(
                f"{argv[0]} exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=5)
    raise ServerDidNotStart(f"{argv[0]} did not listen on {port}: {log_path.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_localstripe(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """localstripe with standalone invoices and finalize on a free port: (process, base URL)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.integration.localstripe_compat", str(port)]
    proc = start_server(argv, port, log_dir / "localstripe.log", cwd=REPO_ROOT)
    return proc, f"http://127.0.0.1:{port}"


def serve_localstripe_with_invoicing(port: int) -> None:
    """Run localstripe with the two invoice endpoints 1.15.10 lacks, from its own model.

    State stays in memory only (`--from-scratch`, and no dump to the /tmp pickle that
    every localstripe on the machine shares).
    """
    from localstripe import resources, server
    from localstripe.errors import UserError

    resources.Store.dump_to_disk = lambda self: None  # leave the shared /tmp pickle alone
    invoice_cls = resources.Invoice
    stock_create = invoice_cls._api_create.__func__

    def create(
        cls,
        customer=None,
        subscription=None,
        metadata=None,
        description=None,
        pending_invoice_items_behavior=None,
        **kwargs,
    ):
        if subscription is not None or kwargs:
            return stock_create(
                cls,
                customer=customer,
                subscription=subscription,
                metadata=metadata,
                description=description,
                **kwargs,
            )
        return cls(customer=customer, metadata=metadata, description=description)

    def finalize(id, **ignored):
        invoice = invoice_cls._api_retrieve(id)
        if invoice.status != "draft":
            raise UserError(
                400, "This invoice is already finalized", {"code": "invoice_not_editable"}
            )
        invoice._finalize()
        return invoice

    invoice_cls._api_create = classmethod(create)
    url = "/v1/invoices/{id}/finalize"
    server.app.router.add_route("POST", url, server.api_extra(finalize, url))
    sys.argv = ["localstripe", "--port", str(port), "--from-scratch"]
    server.start()


if __name__ == "__main__":
    serve_localstripe_with_invoicing(int(sys.argv[1]))
