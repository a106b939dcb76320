"""The one backoff rule: exponential, with ±25 % jitter so retries that failed together spread out.

Download retries (jobs/download.py) and webhook deliveries (webhooks/delivery.py) both wait by it.
"""

from __future__ import annotations

import random

JITTER = 0.25


def delay_s(base_s: float, step: int) -> float:
    """The wait before retry number `step` + 1: `base_s` * 2^step, ±25 %."""
    return base_s * 2**step * random.uniform(1 - JITTER, 1 + JITTER)


def longest_s(base_s: float, step: int) -> float:
    """The most `delay_s(base_s, step)` can be (to size a deadline that covers every wait)."""
    return base_s * 2**step * (1 + JITTER)
