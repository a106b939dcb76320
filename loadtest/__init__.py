"""Capacity testing with Locust: user classes, proxy-timeout judging, thresholds and reports."""
