"""The proof: a real Prometheus scrapes the real API and worker; every dashboard and recording-rule
query must parse and return data, every alert expression must parse.

A dashboard query that returns nothing here would be a blank panel in production.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from service import harness
from service.proxy.profiles import load_profile
from tests.dashboards import all_of, dashboards, queries, shipped_jobs, variables
from tests.hooks import WEBHOOKS, Receiver
from tests.jobs import initiate, initiate_json, wait_for
from tests.proxies import running_mtail, start_proxy
from tests.support import ROOT, require_binary
from tests.tracing import running_receiver, traced_env

OBSERVABILITY = ROOT / "observability"
NAMESPACE = "delineate-proof"


def dashboard_queries(values: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(where, expr) for every Prometheus target of every dashboard, variables at their defaults
    or, for those that default to "All", at `values`."""
    found = []
    for stem, panel, target, expr in queries(values):
        assert "$" not in expr, f"unexpanded variable in {stem}: {expr}"
        found.append((f"{stem}.json: {panel['title']} [{target['refId']}]", expr))
    return found


def rule_queries(kind: str) -> list[tuple[str, str]]:
    name = {"record": "recording.yml", "alert": "alerts.yml"}[kind]
    groups = yaml.safe_load((OBSERVABILITY / "prometheus" / "rules" / name).read_text())["groups"]
    return [(f"{name}: {rule[kind]}", rule["expr"]) for group in groups for rule in group["rules"]]


def prometheus_config(api: str, worker: str, nginx: str, path: Path) -> Path:
    """The repository's prometheus.yml with this test's targets and a 1 s rhythm (no Alertmanager:
    alerts are judged by their expressions here, their routing by tests/test_compose.py). The
    targets carry the label `namespace`, as Kubernetes discovery gives them: the recording rules
    must keep it, or the panels they feed go blank once $namespace is chosen."""
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(OBSERVABILITY / "prometheus" / rule) for rule in config["rule_files"]]
    config.pop("alerting")
    targets = {"delineate-api": api, "delineate-worker": worker, "delineate-nginx": nginx}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]], "labels": {"namespace": NAMESPACE}}]
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        return response.json()

    def value(self, expr: str) -> float:
        result = self.query(expr).get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else math.nan

    def query_variables(self) -> dict[str, str]:
        """Every dashboard query variable (`label_values(selector, label)`) set to every value
        this Prometheus has for it (Grafana's "All" without a custom allValue)."""
        resolved: dict[str, str] = {}
        for dashboard in dashboards().values():
            for name, variable in variables(dashboard).items():
                if variable["type"] != "query":
                    continue
                selector, label = re.fullmatch(
                    r"label_values\((.*),\s*(\w+)\)", variable["definition"]
                ).groups()
                response = httpx.get(
                    f"{self.url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10
                )
                resolved[name] = all_of(response.json()["data"])
        return resolved

    def wait_until(self, expr: str, ready, timeout_s: float = 30) -> float:
        """Poll (never sleep a guess): the first sample lands ~6 s after start."""
        value = math.nan

        def reached() -> bool:
            nonlocal value
            value = self.value(expr)
            return ready(value)

        harness.wait_until(
            reached, timeout_s, lambda: f"{expr} (last value {value})", interval_s=0.25, retry_on=()
        )
        return value


@pytest.fixture
def prometheus_factory(tmp_path: Path):
    procs = []

    def start(api: str, worker: str, nginx: str) -> Prometheus:
        binary = require_binary("prometheus")
        port = harness.free_port()
        config = prometheus_config(api, worker, nginx, tmp_path / "prometheus.yml")
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--enable-feature=exemplar-storage",
        ]
        proc = harness.spawn("prometheus", args, {}, tmp_path / "logs")
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        harness.wait_until(
            lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, 30, "prometheus"
        )
        return Prometheus(url)

    yield start
    for proc in procs:
        proc.stop()


@pytest.mark.slow
def test_every_dashboard_and_recording_rule_query_returns_data(make_stack, prometheus_factory, tmp_path):
    worker_port = harness.free_port()
    hook, broken_hook = Receiver(), Receiver()
    broken_hook.default = 500  # its deliveries give up: the webhook failure series move
    with running_receiver() as otlp, running_mtail(tmp_path) as (syslog, mtail), ExitStack() as stops:
        stack = make_stack(
            API_WORKERS="2",
            WORKER_METRICS_PORT=str(worker_port),
            WORKER_METRICS_ADDR="127.0.0.1",
            DOWNLOAD_DELAY_MIN_MS="1000",  # >= REQUEST_TIMEOUT_MS: the legacy route answers 504
            DOWNLOAD_DELAY_MAX_MS="1500",
            REQUEST_TIMEOUT_MS="1000",
            SMALL_JOB_MAX_FILES="1",  # the two-file job goes to the large queue
            TRUSTED_PROXIES="127.0.0.1/32",
            RATE_LIMIT_MAX_REQUESTS="10",
            WEBHOOK_MAX_ATTEMPTS="2",
            **WEBHOOKS,
            **traced_env(otlp),
        )
        # nginx in front, its log counted by mtail as in compose: the legacy call goes through it.
        nginx_profile = load_profile("test").with_proxy(access_log_syslog=syslog)
        nginx = start_proxy("nginx", nginx_profile, stack.url.removeprefix("http://"), tmp_path)
        stops.callback(nginx.proc.stop, 5)
        prometheus = prometheus_factory(
            stack.url.removeprefix("http://"), f"127.0.0.1:{worker_port}", mtail.removeprefix("http://")
        )
        # Traffic only once every target has a first sample: counters must be seen to move.
        prometheus.wait_until('count(up{job=~"delineate-.+"} == 1)', lambda v: v == 3)

        addresses = (f"198.51.100.{n % 250}" for n in itertools.count(1))

        def own_address(request: httpx.Request) -> None:
            """Each request from its own client address: only the flood below hits the limit."""
            if "x-forwarded-for" not in request.headers:
                request.headers["X-Forwarded-For"] = next(addresses)

        def scenario(client: httpx.Client, round_no: int) -> dict[str, dict]:
            jobs = {
                "single": initiate(client, [70000]),
                "bundle": initiate_json(client, {"file_ids": [70000, 70007], "callbackUrl": hook.url}),
                "failed": initiate_json(client, {"file_ids": [12_345], "callbackUrl": broken_hook.url}),
            }
            cancelled = initiate(client, [70014])
            assert client.delete(f"/v1/download/{cancelled}").status_code == 200
            with nginx.client() as through_nginx:  # the API's 504, passed on (and logged) by nginx
                legacy = through_nginx.post("/v1/download/start", json={"file_id": 70000})
            assert legacy.status_code == 504, legacy.text
            flooder = {"X-Forwarded-For": f"203.0.113.{round_no}"}
            flood = [client.get("/", headers=flooder).status_code for _ in range(12)]
            rejected.append(flood.count(429))
            assert rejected[-1] >= 1  # 2, or fewer if a rate-limit window boundary fell inside
            assert client.get("/v1/download/status/00000000-0000-0000-0000-000000000000").status_code == 404
            done = {name: wait_for(client, job_id) for name, job_id in jobs.items()}
            assert [done[n]["status"] for n in ("single", "bundle", "failed")] == [
                "completed",
                "completed",
                "failed",
            ]
            assert client.get(f"/v1/download/{jobs['bundle']}/file").status_code == 302
            return done

        rejected: list[int] = []

        # Two rounds: a series is born at its first increment, which rate() cannot see; the
        # second round moves series Prometheus already has (as steady traffic does).
        with stack.client(event_hooks={"request": [own_address]}) as client:
            first = scenario(client, 1)
            prometheus.wait_until('sum(delineate_jobs_finished_total{outcome="failed"})', lambda v: v == 1)
            prometheus.wait_until('sum(delineate_http_server_errors_total{status="504"})', lambda v: v == 1)
            prometheus.wait_until('sum(delineate_nginx_responses_total{status="504"})', lambda v: v == 1)
            done = scenario(client, 2)

        # Prometheus has the final state of both processes and has evaluated the rules.
        prometheus.wait_until('sum(delineate_jobs_finished_total{outcome="completed"})', lambda v: v == 4)
        prometheus.wait_until('sum(delineate_jobs_finished_total{outcome="failed"})', lambda v: v == 2)
        prometheus.wait_until('sum(delineate_http_server_errors_total{status="504"})', lambda v: v == 2)
        prometheus.wait_until('sum(delineate_nginx_responses_total{status="504"})', lambda v: v == 2)
        prometheus.wait_until("sum(delineate_rate_limit_rejections_total)", lambda v: v == sum(rejected))
        prometheus.wait_until("sum(delineate_jobs_cancelled_total)", lambda v: v == 2)
        prometheus.wait_until('sum(delineate_jobs_finished_total{outcome="cancelled"})', lambda v: v == 2)
        prometheus.wait_until(
            'sum(delineate_webhook_deliveries_total{outcome="delivered"})', lambda v: v == 2
        )
        prometheus.wait_until('sum(delineate_webhook_deliveries_total{outcome="gave_up"})', lambda v: v == 2)
        prometheus.wait_until("count(delineate:slo_jobs:slow_ratio_rate5m)", lambda v: v == 1)
        prometheus.wait_until("count(delineate:slo_jobs:slow_ratio_rate30d)", lambda v: v == 1)
        assert prometheus.value('sum(delineate_jobs_accepted_total{queue="downloads-large"})') == 2

        failures = []
        values = prometheus.query_variables()
        # $job finds the scrape jobs; $namespace the one namespace, chosen as a user would
        assert values == {"job": all_of(shipped_jobs()), "namespace": all_of([NAMESPACE])}
        checked = [*dashboard_queries(values), *rule_queries("record")]
        assert len(checked) > 40
        for where, expr in checked:
            answer = prometheus.query(expr)
            if answer.get("status") != "success":
                failures.append(f"{where}: {answer.get('error')}\n    {expr}")
                continue
            values = [float(sample["value"][1]) for sample in answer["data"]["result"]]
            if not any(math.isfinite(value) for value in values):
                failures.append(f"{where}: no data ({values})\n    {expr}")
        for where, expr in rule_queries("alert"):
            answer = prometheus.query(expr)
            if answer.get("status") != "success":
                failures.append(f"{where}: {answer.get('error')}\n    {expr}")
        assert not failures, "\n".join(failures)

        # Trace links: the job-duration exemplars carry the jobs' trace ids (Grafana -> Jaeger).
        trace_ids = {body["traceId"] for body in [*first.values(), *done.values()]}
        now = time.time()
        exemplars = httpx.get(
            f"{prometheus.url}/api/v1/query_exemplars",
            params={"query": "delineate_job_duration_seconds_bucket", "start": now - 600, "end": now + 60},
            timeout=10,
        ).json()["data"]
        linked = {e["labels"]["trace_id"] for series in exemplars for e in series["exemplars"]}
        # a bucket keeps its latest exemplar per scrape: every one is a job's, and each series has one
        assert linked and linked <= trace_ids, (linked, trace_ids)
        assert len(linked) >= 3
    hook.server.shutdown()
    broken_hook.server.shutdown()


if __name__ == "__main__":  # print the queries the proof runs
    jobs = {"job": all_of(shipped_jobs())}
    for where, expr in [*dashboard_queries(jobs), *rule_queries("record"), *rule_queries("alert")]:
        print(f"{where}\n    {' '.join(expr.split())}", file=sys.stdout)
