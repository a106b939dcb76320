"""Recording rules and alerts, as (comment, group) pairs: the comment is written above the
group in the rendered file, since YAML serialisation keeps no comments; a rule's own comment is
its key "#" (written above the rule, not as a field)."""

from __future__ import annotations

from observability.mixin.config import Config

# The SLO alert windows (the long and the short of each burn rate) and the 30-day budget's.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# Left out of the availability SLO: the deprecated synchronous /v1/download/start (its 504 at
# REQUEST_TIMEOUT_MS is its documented behaviour), health probes and /metrics (not user traffic).
NOT_SLO = 'route!~"/v1/download/start|/metrics|/health|/health/.*"'
# Streams stay open for minutes: their duration is not a latency.
NOT_STREAM = 'route!="/v1/download/stream/{job_id}"'
AVAILABILITY_BUDGET = 0.001  # 99.9 %
JOB_LATENCY_BUDGET = 0.01  # 99 %
# The job-latency SLO's threshold, as prometheus-client writes the 150 s bucket edge.
SLOW_JOB_LE = 'le="150.0"'
NOT_CANCELLED = 'outcome!="cancelled"'
FIVE_XX = 'status="5xx"'
NOT_DELIVERED = 'outcome!="delivered"'

RECORDING_HEADER = """\
# Recording rules: what dashboards and alerts read, computed once per evaluation.
# Every expression here is executed against a real Prometheus scraping the real service by
# tests/test_observability_prometheus.py; it must parse and return data.
"""

ALERTS_HEADER = """\
# Alerts. Each has a runbook (docs/runbooks/<alert>.md) and promtool unit tests, firing and not
# firing (observability/prometheus/tests/alerts_test.yml, run by the test suite). runbook_url
# links are absolute: the base is the external label `runbook_base` (prometheus.yml), set once.
#
# SLO alerts are multi-window, multi-burn-rate (Google SRE workbook, ch. 5): page when the
# error budget burns 14.4x (2 % of a 30-day budget in 1 h) or 6x (5 % in 6 h), ticket when it
# burns 3x over a day or 1x over three days; the short window makes the alert stop soon after
# the burning does.
"""


def _quantile(c: Config, q: float, metric: str, *labels: str, matchers: tuple[str, ...] = ()) -> str:
    return f"histogram_quantile({q}, {c.agg('sum', *labels, 'le')}(rate({c.metric(metric, *matchers)}[5m])))"


def _multiline(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _availability_ratio(c: Config, window: str) -> str:
    """5xx over all requests of the SLO; 0 (not absent) when there was no 5xx: the fallback is
    the requests' own rate times 0, so it carries the group_by labels (`vector(0)` has none and
    would match no namespace)."""
    requests = f"{c.agg('sum')}(rate({c.metric('delineate_http_requests_total', NOT_SLO)}[{window}]))"
    errors = f"{c.agg('sum')}(rate({c.metric('delineate_http_requests_total', FIVE_XX, NOT_SLO)}[{window}]))"
    return _multiline("(", f"  {errors}", "  or", f"  {requests} * 0", ")", f"/ {requests}")


def _jobs(c: Config, metric: str, window: str, *matchers: str) -> str:
    return f"{c.agg('sum')}(rate({c.metric(metric, *matchers, NOT_CANCELLED)}[{window}]))"


def recording(c: Config) -> list[tuple[str, dict]]:
    requests = "delineate_http_requests_total"

    def slow_jobs(window: str) -> str:
        """The share of finished jobs slower than the SLO's 150 s."""
        return _multiline(
            "1 - (",
            f"  {_jobs(c, 'delineate_job_duration_seconds_bucket', window, SLOW_JOB_LE)}",
            f"  / {_jobs(c, 'delineate_job_duration_seconds_count', window)}",
            ")",
        )

    return [
        (
            "",
            {
                "name": "delineate-http",
                "rules": [
                    {
                        "record": "delineate:http_requests:rate5m",
                        "expr": f"{c.agg('sum', 'route', 'method', 'status')}"
                        f"(rate({c.metric(requests)}[5m]))",
                    },
                    {
                        "record": "delineate:http_requests_by_route:rate5m",
                        "expr": f"{c.agg('sum', 'route')}(rate({c.metric(requests)}[5m]))",
                    },
                    {
                        "#": "0 (not absent) for routes without errors: `or` fills in the routes\n"
                        "that had none.",
                        "record": "delineate:http_errors:ratio_rate5m",
                        "expr": _multiline(
                            "(",
                            f"  {c.agg('sum', 'route')}(rate({c.metric(requests, FIVE_XX)}[5m]))",
                            "  or",
                            f"  {c.agg('sum', 'route')}(rate({c.metric(requests)}[5m])) * 0",
                            ")",
                            f"/ {c.agg('sum', 'route')}(rate({c.metric(requests)}[5m]))",
                        ),
                    },
                    *(
                        {
                            "record": f"delineate:http_request_duration_seconds:p{p}_5m",
                            "expr": _quantile(
                                c,
                                q,
                                "delineate_http_request_duration_seconds_bucket",
                                "route",
                                matchers=(NOT_STREAM,),
                            ),
                        }
                        for p, q in (("50", 0.5), ("90", 0.9), ("99", 0.99))
                    ),
                ],
            },
        ),
        (
            "# SLO: availability 99.9 % of API requests answered without a 5xx. Excluded: the deprecated\n"
            "# synchronous /v1/download/start (its 504 at REQUEST_TIMEOUT_MS is its documented behaviour),\n"
            "# health probes and /metrics (not user traffic).",
            {
                "name": "delineate-slo-availability",
                "rules": [
                    {
                        "record": f"delineate:slo_availability:error_ratio_rate{w}",
                        "expr": _availability_ratio(c, w),
                    }
                    for w in WINDOWS
                ],
            },
        ),
        (
            "# The 30-day budgets, from the 5-minute rates recorded every evaluation (not a raw [30d]\n"
            "# range over every series): the evaluations over-count numerator and denominator alike, so\n"
            "# the ratio is the request- (or job-) weighted ratio over the 30 days these series are kept.\n"
            "# Needs --storage.tsdb.retention.time >= 30d (docker-compose.yml sets 35d; the default is 15d).",
            {
                "name": "delineate-slo-budget",
                "rules": [
                    {
                        "record": "delineate:slo_availability:errors:rate5m",
                        "expr": _multiline(
                            f"{c.agg('sum')}(rate({c.metric(requests, FIVE_XX, NOT_SLO)}[5m]))",
                            f"or {c.agg('sum')}(rate({c.metric(requests, NOT_SLO)}[5m])) * 0",
                        ),
                    },
                    {
                        "record": "delineate:slo_availability:requests:rate5m",
                        "expr": _multiline(f"{c.agg('sum')}(rate({c.metric(requests, NOT_SLO)}[5m]))"),
                    },
                    {
                        "record": "delineate:slo_availability:error_ratio_rate30d",
                        "expr": _multiline(
                            "sum_over_time(delineate:slo_availability:errors:rate5m[30d])",
                            "/ sum_over_time(delineate:slo_availability:requests:rate5m[30d])",
                        ),
                    },
                    {
                        "record": "delineate:slo_jobs:slow:rate5m",
                        "expr": _multiline(
                            _jobs(c, "delineate_job_duration_seconds_count", "5m"),
                            f"- {_jobs(c, 'delineate_job_duration_seconds_bucket', '5m', SLOW_JOB_LE)}",
                        ),
                    },
                    {
                        "record": "delineate:slo_jobs:finished:rate5m",
                        "expr": _multiline(_jobs(c, "delineate_job_duration_seconds_count", "5m")),
                    },
                    {
                        "record": "delineate:slo_jobs:slow_ratio_rate30d",
                        "expr": _multiline(
                            "sum_over_time(delineate:slo_jobs:slow:rate5m[30d])",
                            "/ sum_over_time(delineate:slo_jobs:finished:rate5m[30d])",
                        ),
                    },
                ],
            },
        ),
        (
            "# SLO: 99 % of accepted jobs reach a terminal state within 150 s of being accepted\n"
            "# (completed or failed; cancelled jobs are the client's choice and are left out).\n"
            '# le="150.0" is how prometheus-client writes the 150 s bucket edge.',
            {
                "name": "delineate-slo-jobs",
                "rules": [
                    {"record": f"delineate:slo_jobs:slow_ratio_rate{w}", "expr": slow_jobs(w)}
                    for w in WINDOWS
                ],
            },
        ),
        (
            "",
            {
                "name": "delineate-jobs",
                "rules": [
                    {
                        "record": "delineate:jobs_finished:rate5m",
                        "expr": f"{c.agg('sum', 'outcome')}"
                        f"(rate({c.metric('delineate_jobs_finished_total')}[5m]))",
                    },
                    {
                        "#": "Read from Redis at scrape time by every API process, which all export the\n"
                        "same value: max, never sum (a sum counts each job or worker once per process).",
                        "record": "delineate:queue_depth:max",
                        "expr": f"{c.agg('max', 'queue')}({c.metric('delineate_queue_depth')})",
                    },
                    {
                        "record": "delineate:rq_workers:max",
                        "expr": f"{c.agg('max', 'state')}({c.metric('delineate_rq_workers')})",
                    },
                    {
                        "record": "delineate:job_duration_seconds:p90_5m",
                        "expr": _quantile(c, 0.9, "delineate_job_duration_seconds_bucket"),
                    },
                    {
                        "record": "delineate:job_queue_wait_seconds:p90_5m",
                        "expr": _quantile(c, 0.9, "delineate_job_queue_wait_seconds_bucket", "queue"),
                    },
                    {
                        "record": "delineate:s3_request_duration_seconds:p99_5m",
                        "expr": _quantile(
                            c, 0.99, "delineate_s3_request_duration_seconds_bucket", "operation"
                        ),
                    },
                ],
            },
        ),
    ]


def _runbook(alert: str) -> str:
    return "{{ $externalLabels.runbook_base }}" + f"{alert}.md"


def _burn(recorded: str, budget: float) -> tuple[str, str]:
    """The fast (page) and slow (ticket) multi-window burn-rate expressions of one SLO."""

    def over(factor: float, long: str, short: str) -> str:
        limit = f"({factor} * {budget})" if factor != 1 else f"{budget}"
        return _multiline(
            "(",
            f"  {recorded}{long} > {limit}",
            f"  and {recorded}{short} > {limit}",
            ")",
        ).rstrip("\n")

    fast = f"{over(14.4, '1h', '5m')}\nor\n{over(6, '6h', '30m')}\n"
    slow = f"{over(3, '1d', '2h')}\nor\n{over(1, '3d', '6h')}\n"
    return fast, slow


def _slo_alert(
    name: str, expr: str, wait: str, severity: str, slo: str, summary: str, description: str
) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity, "slo": slo},
        "annotations": {"summary": summary, "description": description, "runbook_url": _runbook(name)},
    }


def _alert(name: str, expr: str, wait: str, severity: str, summary: str, description: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook_url": _runbook(name)},
    }


def alerts(c: Config) -> list[tuple[str, dict]]:
    availability_fast, availability_slow = _burn(
        "delineate:slo_availability:error_ratio_rate", AVAILABILITY_BUDGET
    )
    jobs_fast, jobs_slow = _burn("delineate:slo_jobs:slow_ratio_rate", JOB_LATENCY_BUDGET)
    depth = c.metric("delineate_queue_depth")
    webhooks = "delineate_webhook_deliveries_total"
    s3 = ("delineate_s3_errors_total", "delineate_s3_request_duration_seconds_count")
    return [
        (
            "",
            {
                "name": "delineate-slo-alerts",
                "rules": [
                    _slo_alert(
                        "DelineateAvailabilityBudgetBurnFast",
                        availability_fast,
                        "2m",
                        "page",
                        "availability",
                        "API 5xx are burning the 99.9 % availability budget fast",
                        (
                            "API 5xx ratio is over 14.4x the budget rate for 1 h (or 6x for 6 h); see the "
                            "SLO burn dashboard."
                        ),
                    ),
                    _slo_alert(
                        "DelineateAvailabilityBudgetBurnSlow",
                        availability_slow,
                        "1h",
                        "ticket",
                        "availability",
                        "API 5xx are slowly eating the 99.9 % availability budget",
                        (
                            "API 5xx ratio is over 3x the budget rate for 1 day (or 1x for 3 days); see the "
                            "SLO burn dashboard."
                        ),
                    ),
                    _slo_alert(
                        "DelineateJobLatencyBudgetBurnFast",
                        jobs_fast,
                        "2m",
                        "page",
                        "job-latency",
                        "Jobs take longer than 150 s, burning the 99 % job-latency budget fast",
                        (
                            "Jobs slower than 150 s are over 14.4x the budget rate for 1 h (or 6x for 6 h); "
                            "see the SLO burn dashboard."
                        ),
                    ),
                    _slo_alert(
                        "DelineateJobLatencyBudgetBurnSlow",
                        jobs_slow,
                        "1h",
                        "ticket",
                        "job-latency",
                        "Jobs slower than 150 s are slowly eating the 99 % job-latency budget",
                        (
                            "Jobs slower than 150 s are over 3x the budget rate for 1 day (or 1x for 3 "
                            "days); see the SLO burn dashboard."
                        ),
                    ),
                ],
            },
        ),
        (
            "",
            {
                "name": "delineate-queue-alerts",
                "rules": [
                    _alert(
                        "DelineateQueueDepthGrowing",
                        _multiline(
                            f"{c.agg('max', 'queue')}({depth}) > 10",
                            f"and {c.agg('max', 'queue')}(deriv({depth}[15m])) > 0",
                        ),
                        "15m",
                        "page",
                        "Queue {{ $labels.queue }} keeps growing",
                        (
                            "{{ $value }} jobs wait in {{ $labels.queue }} and the backlog has grown for 15 "
                            "minutes."
                        ),
                    ),
                    _alert(
                        "DelineateJobsWaitingNoBusyWorkers",
                        _multiline(
                            f"{c.agg('max', 'queue')}({depth}) > 0",
                            f'and {c.on()} delineate:rq_workers:max{{state="busy"}} == 0',
                        ),
                        "5m",
                        "page",
                        "Jobs wait in {{ $labels.queue }} but no worker is busy",
                        (
                            "{{ $value }} jobs wait in {{ $labels.queue }}; no RQ worker has run a job for 5 "
                            "minutes."
                        ),
                    ),
                ],
            },
        ),
        (
            "",
            {
                "name": "delineate-dependency-alerts",
                "rules": [
                    _alert(
                        "DelineateRedisMemoryHigh",
                        _multiline(
                            f"{c.agg('max')}({c.metric('delineate_redis_memory_used_bytes')})"
                            f" / ({c.agg('max')}({c.metric('delineate_redis_memory_max_bytes')}) > 0) > 0.8"
                        ),
                        "15m",
                        "ticket",
                        "Redis is above 80 % of its maxmemory",
                        (
                            "Redis uses {{ $value | humanizePercentage }} of maxmemory; with noeviction, "
                            "initiate answers 503 once it is full."
                        ),
                    ),
                    _alert(
                        "DelineateWebhookFailureRatio",
                        _multiline(
                            f"{c.agg('sum')}(rate({c.metric(webhooks, NOT_DELIVERED)}[15m]))",
                            f"/ {c.agg('sum')}(rate({c.metric(webhooks)}[15m])) > 0.2",
                        ),
                        "15m",
                        "ticket",
                        "More than 20 % of webhook deliveries fail",
                        (
                            "{{ $value | humanizePercentage }} of webhook delivery attempts failed over 15 "
                            "minutes."
                        ),
                    ),
                    _alert(
                        "DelineateS3Errors",
                        _multiline(
                            f"{c.agg('sum', 'operation')}(rate({c.metric(s3[0])}[5m]))",
                            f"/ {c.agg('sum', 'operation')}(rate({c.metric(s3[1])}[5m])) > 0.05",
                        ),
                        "10m",
                        "page",
                        "S3 {{ $labels.operation }} calls fail",
                        (
                            "{{ $value | humanizePercentage }} of S3 {{ $labels.operation }} calls failed "
                            "over 10 minutes."
                        ),
                    ),
                    _alert(
                        "DelineateTargetDown",
                        c.metric("up", c.targets_up) + " == 0",
                        "2m",
                        "page",
                        "{{ $labels.job }} target {{ $labels.instance }} cannot be scraped",
                        (
                            "Prometheus has not scraped {{ $labels.instance }} for 2 minutes: the process is "
                            "down or unreachable."
                        ),
                    ),
                    {
                        "#": "TargetDown needs an `up` series at 0; with service discovery a worker pool\n"
                        "scaled to zero (or a broken DNS name) leaves no series at all, so only\n"
                        "absent() sees it (and, having no series, it cannot name a group_by label:\n"
                        "one alert for all).",
                        **_alert(
                            "DelineateNoWorkerUp",
                            f"absent({c.metric('up', c.worker_up)} == 1)",
                            "5m",
                            "page",
                            "No worker is up: jobs are accepted and never run",
                            (
                                "Prometheus has scraped no delineate-worker target for 5 minutes: none is "
                                "discovered, or none answers."
                            ),
                        ),
                    },
                ],
            },
        ),
    ]
