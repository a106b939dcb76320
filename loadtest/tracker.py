"""What the simulated clients started and saw finish, sampled once a second for the plot."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Sample:
    t_s: float
    in_flight: int
    p99_ms: float
    failures: int
    requests: int


@dataclass
class JobTracker:
    """Jobs per client-observed outcome; `in_flight` = accepted (202) and not yet seen terminal."""

    running: dict[str, float] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    started: int = 0
    peak_in_flight: int = 0
    max_sse_gap_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def start(self, job_id: str) -> None:
        self.started += 1
        self.running[job_id] = time.monotonic()
        self.peak_in_flight = max(self.peak_in_flight, len(self.running))

    def finish(self, job_id: str, outcome: str) -> float:
        """Record the terminal status a client saw; returns the job's age in seconds."""
        self.outcomes[outcome] += 1
        began = self.running.pop(job_id, None)
        return 0.0 if began is None else time.monotonic() - began

    def sse_gap(self, gap_s: float) -> None:
        self.max_sse_gap_s = max(self.max_sse_gap_s, gap_s)

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def sample(self, p99_ms: float, failures: int, requests: int) -> None:
        self.samples.append(Sample(time.monotonic() - self.began, self.in_flight, p99_ms, failures, requests))
