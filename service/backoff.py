"""The one backoff rule: exponential, with ±25 % jitter so retries that failed together spread out.

Download retries (jobs/download.py), webhook deliveries (webhooks/delivery.py) and the waits of
a download riding out a dependency outage (jobs/outage.py, capped) all wait by it.
"""

from __future__ import annotations

import math
import random

JITTER = 0.25


def delay_s(base_s: float, step: int, cap_s: float = math.inf) -> float:
    """The wait before retry number `step` + 1: `base_s` * 2^step, at most `cap_s`, ±25 %."""
    return min(base_s * 2**step, cap_s) * random.uniform(1 - JITTER, 1 + JITTER)


def longest_s(base_s: float, step: int) -> float:
    """The most `delay_s(base_s, step)` can be (to size a deadline that covers every wait)."""
    return base_s * 2**step * (1 + JITTER)
