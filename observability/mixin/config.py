"""What an installation changes in the mixin: which series are the service's, and which labels
separate one deployment of it from another."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """`selector`: label matchers every one of the service's series must match, e.g.
    `job=~"delineate-.+"` where other services export metrics of the same names; empty
    matches every series of the service's metric names.

    `group_by`: labels every recording rule and alert keeps (each aggregation groups by them)
    and each dashboard offers as a variable filtering every query. A label a series does not
    carry is simply absent from the result, so the default `namespace` changes nothing on a
    Prometheus without one (compose) and splits by namespace on Kubernetes.

    `api_job`, `worker_job`: the scrape jobs of the API and worker processes, for the alerts
    on `up` (a target down, no worker at all).
    """

    selector: str = ""
    group_by: tuple[str, ...] = ("namespace",)
    api_job: str = "delineate-api"
    worker_job: str = "delineate-worker"

    @property
    def matchers(self) -> list[str]:
        return [self.selector] if self.selector else []

    def metric(self, name: str, *matchers: str) -> str:
        """A selector of one of the service's raw series: its own matchers, then the selector."""
        together = [*matchers, *self.matchers]
        return f"{name}{{{','.join(together)}}}" if together else name

    def agg(self, op: str, *labels: str) -> str:
        """`sum by (route, namespace) ` or `sum`: an aggregation keeping `labels` and group_by."""
        kept = [*labels, *(label for label in self.group_by if label not in labels)]
        return f"{op} by ({', '.join(kept)}) " if kept else op

    def on(self) -> str:
        """The labels a one-to-one match across two aggregations joins on."""
        return f"on ({', '.join(self.group_by)})"

    @property
    def targets_up(self) -> str:
        """The `up` matcher of the API and worker targets."""
        return f'job=~"{self.api_job}|{self.worker_job}"'

    @property
    def worker_up(self) -> str:
        return f'job="{self.worker_job}"'
