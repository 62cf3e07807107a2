"""The receivers' verification helper (docs/API.md#webhook-verify)."""

from __future__ import annotations

import time

import pytest

from kernel.webhook_signature import SignatureError, sign, verify

SECRET = "whsec_test"
BODY = b'{"id":"evt_1","object":"event"}'


def test_a_fresh_signature_verifies_and_returns_its_timestamp():
    header = sign(SECRET, BODY)
    assert abs(verify(SECRET, header, BODY) - time.time()) < 5


@pytest.mark.parametrize("secret,body", [("whsec_other", BODY), (SECRET, BODY + b" ")])
def test_another_secret_or_a_changed_body_is_refused(secret, body):
    with pytest.raises(SignatureError, match="does not match"):
        verify(secret, sign(SECRET, BODY), body)


def test_a_replay_of_an_old_timestamp_is_refused():
    old = sign(SECRET, BODY, timestamp=int(time.time()) - 301)
    with pytest.raises(SignatureError, match="from now"):
        verify(SECRET, old, BODY)
    assert verify(SECRET, old, BODY, tolerance=600)  # a receiver may widen the window


@pytest.mark.parametrize("header", [None, "", "t=1", "v1=ab", "t=x,v1=ab", "garbage"])
def test_missing_or_malformed_headers_are_refused(header):
    with pytest.raises(SignatureError):
        verify(SECRET, header, BODY)


def test_any_of_several_v1_values_may_match():
    good = sign(SECRET, BODY)
    t, v1 = good.split(",")
    assert verify(SECRET, f"{t},v1={'0' * 64},{v1}", BODY)
