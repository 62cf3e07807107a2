"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def say(capsys):
    """Print past pytest's output capture, so CI's log shows what a test measured."""

    def _say(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    return _say
