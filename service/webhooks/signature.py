"""Standard Webhooks signatures: the one implementation behind the service's signer
(webhooks/delivery.py) and the receivers' check (`service.client.verify_webhook`).

The scheme (https://www.standardwebhooks.com): the secret is `whsec_` + base64 of the key; a
delivery carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, several separated by spaces
while a secret is rotated). A receiver refuses a timestamp more than five minutes away from
its clock, so a captured delivery cannot be replayed later.

Standard library only: the client imports this module without the server's dependencies.
Tests check it against the scheme's reference library (`standardwebhooks`) both ways.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 (the scheme's prefix, not a secret)
TOLERANCE_S = 300  # the scheme's five minutes


class InvalidSignature(ValueError):
    """A delivery that must not be trusted: headers missing, stale, or no signature matches."""


def _key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (the prefix is optional, padding forgiven)."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


class Signer:
    """Signs deliveries with one secret (the key is decoded once)."""

    def __init__(self, secret: str) -> None:
        self._key = _key(secret)

    def sign(self, msg_id: str, timestamp: datetime | int, payload: str | bytes) -> str:
        """The `webhook-signature` value for this id, time and exact body."""
        seconds = int(timestamp.timestamp()) if isinstance(timestamp, datetime) else int(timestamp)
        body = payload.encode() if isinstance(payload, str) else payload
        digest = hmac.new(self._key, f"{msg_id}.{seconds}.".encode() + body, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def verify(
        self, payload: str | bytes, headers: Mapping[str, str], tolerance_s: float = TOLERANCE_S
    ) -> Any:
        """The delivery's JSON once its headers prove it came from the holder of the secret.

        Raises InvalidSignature otherwise. `payload` must be the body exactly as received.
        """
        lower = {name.lower(): value for name, value in headers.items()}
        msg_id, stamp, signatures = (
            lower.get("webhook-id"),
            lower.get("webhook-timestamp"),
            lower.get("webhook-signature"),
        )
        if not (msg_id and stamp and signatures):
            raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
        try:
            seconds = int(stamp)
        except ValueError:
            raise InvalidSignature("webhook-timestamp is not Unix seconds") from None
        if abs(time.time() - seconds) > tolerance_s:
            raise InvalidSignature("webhook-timestamp is too far from now (a replay, or a wrong clock)")
        expected = self.sign(msg_id, seconds, payload).encode()
        if not any(hmac.compare_digest(expected, given.encode()) for given in signatures.split()):
            raise InvalidSignature("no webhook-signature matches this secret and body")
        return json.loads(payload)


def verify(
    secret: str, payload: str | bytes, headers: Mapping[str, str], tolerance_s: float = TOLERANCE_S
) -> Any:
    """`Signer(secret).verify(payload, headers)`: for a receiver holding WEBHOOK_SECRET."""
    return Signer(secret).verify(payload, headers, tolerance_s)
