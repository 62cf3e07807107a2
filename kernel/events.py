"""Domain events the app reports to metrics and the audit trail.

Blueprints call these after a change; what listens (Prometheus counters, the audit
chain) plugs in here rather than into every endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernel.vocabulary import Event


class Events:
    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[..., Any]]] = {}

    def on(self, name: str, fn: Callable[..., Any]) -> None:
        self._listeners.setdefault(name, []).append(fn)

    def emit(self, name: str, *args: Any, **kwargs: Any) -> None:
        for fn in self._listeners.get(name, ()):
            fn(*args, **kwargs)

    # Named shortcuts keep call sites readable.
    def batch_ingested(self, provider_id: str, result: Any) -> None:
        self.emit(Event.BATCH_INGESTED, provider_id, result)

    def record_voided(self, session: Any, record: Any) -> None:
        self.emit(Event.RECORD_VOIDED, session, record)
