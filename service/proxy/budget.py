"""The timeout budget across layers: each broken rule becomes one sentence an operator can act on.

Violations make `delineate proxy check` fail; warnings (the deprecated /start path, kept for old
clients) are printed but do not, because every realistic delay range already exceeds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.proxy.profiles import ALB_TARGETS, KILL_MARGIN_S, NGINX_TARGETS, Pods, Profile
from service.settings import API_SHUTDOWN_GRACE_S

Severity = Literal["violation", "warning"]
POLL_HINT_MAX_S = 30  # beyond this a finished download waits too long for its poller


@dataclass(frozen=True)
class Finding:
    severity: Severity
    rule: str
    sentence: str


def idle_timeouts(profile: Profile) -> list[tuple[str, float]]:
    """Every timeout an open but quiet SSE stream must beat, named as the operator knows it."""
    proxy = profile.proxy
    named: list[tuple[str, float]] = []
    for target in profile.targets:
        if target == "nginx":
            named += [
                ("nginx proxy_read_timeout", proxy.read_timeout_s),
                ("nginx send_timeout", proxy.client_timeout_s),
            ]
        elif target == "ingress-nginx":
            named.append(("the ingress-nginx proxy-read-timeout", proxy.read_timeout_s))
        elif target == "cloudflare":
            named.append(("the Cloudflare Proxy Read Timeout", proxy.read_timeout_s))
        else:
            named.append(("the ALB idle timeout", proxy.read_timeout_s))
    return named


def upstream_idle(profile: Profile) -> list[tuple[str, float]]:
    """How long each layer may keep an idle connection to the app and then reuse it."""
    proxy = profile.proxy
    names = {
        "nginx": "nginx's upstream keepalive_timeout",
        "cloudflare": "Cloudflare's Proxy Idle Timeout",
        "alb": "the ALB idle timeout",
        "ingress-nginx": "ingress-nginx's upstream-keepalive-timeout",
        "aws-alb": "the ALB idle timeout",
    }
    values = {
        "nginx": proxy.upstream_keepalive_s,
        "cloudflare": proxy.upstream_keepalive_s,
        "alb": max(proxy.read_timeout_s, proxy.upstream_keepalive_s),
        "ingress-nginx": proxy.upstream_keepalive_s,
        "aws-alb": max(proxy.read_timeout_s, proxy.upstream_keepalive_s),
    }
    return [(names[target], values[target]) for target in profile.targets]


def check(profile: Profile, pods: Pods | None = None) -> list[Finding]:
    """All findings for one profile, violations first. `pods`: the Kubernetes values read from
    rendered manifests; by default those the profile's [kubernetes] section derives."""
    app, proxy, scenario = profile.app, profile.proxy, profile.scenario
    found: list[Finding] = []

    def violation(rule: str, sentence: str) -> None:
        found.append(Finding("violation", rule, sentence))

    for name, timeout in idle_timeouts(profile):
        if app.sse_heartbeat_s >= timeout:
            violation(
                "heartbeat",
                f"SSE_HEARTBEAT_S ({_s(app.sse_heartbeat_s)}) is not shorter than {name} "
                f"({_s(timeout)}), so a quiet event stream is cut before its next heartbeat.",
            )
    for name, idle in upstream_idle(profile):
        if app.uvicorn_keepalive_s <= idle:
            violation(
                "keepalive",
                f"UVICORN_KEEPALIVE_S ({_s(app.uvicorn_keepalive_s)}) does not outlast {name} "
                f"({_s(idle)}), so the proxy can reuse a connection uvicorn is closing and answer 502.",
            )
    if app.request_timeout_ms >= proxy.read_timeout_s * 1000:
        violation(
            "request-timeout",
            f"REQUEST_TIMEOUT_MS ({app.request_timeout_ms} ms) is not shorter than the proxy's read "
            f"timeout ({_s(proxy.read_timeout_s)}), so the proxy cuts slow requests before the app "
            "can answer with its own JSON 504.",
        )
    if app.poll_interval_s > POLL_HINT_MAX_S:
        violation(
            "retry-after",
            f"POLL_INTERVAL_S ({app.poll_interval_s} s) is longer than {POLL_HINT_MAX_S} s, so a client "
            "following Retry-After learns of a finished download far too late.",
        )
    window_s = app.rate_limit_window_ms / 1000
    polls = window_s / app.poll_interval_s
    if polls >= app.rate_limit_max_requests:
        violation(
            "retry-after",
            f"POLL_INTERVAL_S ({app.poll_interval_s} s) makes a client following Retry-After send "
            f"{polls:g} polls per {window_s:g} s window, at or above RATE_LIMIT_MAX_REQUESTS "
            f"({app.rate_limit_max_requests}), so well-behaved pollers get 429.",
        )
    if (
        NGINX_TARGETS & set(profile.targets)
        and proxy.rate_limit_rps
        and 1 / app.poll_interval_s > proxy.rate_limit_rps
    ):
        violation(
            "retry-after",
            f"POLL_INTERVAL_S ({app.poll_interval_s} s) is faster than nginx's limit_req rate "
            f"({proxy.rate_limit_rps:g} r/s), so well-behaved pollers get 503 from nginx.",
        )
    if proxy.client_max_body_kb * 1024 < app.max_body_bytes:
        violation(
            "body-limit",
            f"The proxy's body limit ({proxy.client_max_body_kb} KiB) is below MAX_BODY_BYTES "
            f"({app.max_body_bytes}), so large requests get the proxy's 413 instead of the API's JSON error.",
        )
    if ALB_TARGETS & set(profile.targets):
        reconnect_s = app.sse_max_stream_s + app.sse_retry_ms / 1000
        if proxy.deregistration_delay_s <= reconnect_s:
            violation(
                "deregistration",
                f"The deregistration delay ({proxy.deregistration_delay_s} s) is not longer than the "
                "longest SSE stream plus its reconnect "
                f"(SSE_MAX_STREAM_S + SSE_RETRY_MS = {reconnect_s:g} s), "
                "so a deploy cuts streams instead of letting them resume on another target.",
            )
    if profile.kubernetes:
        found += _pod_findings(profile, pods or profile.kubernetes.pods())
    longest_start_s = scenario.download_delay_max_ms / 1000
    if longest_start_s >= proxy.read_timeout_s:
        found.append(
            Finding(
                "warning",
                "legacy-start",
                f"Legacy POST /v1/download/start is unsafe behind this proxy: downloads take up to "
                f"{_s(longest_start_s)} and the proxy cuts at {_s(proxy.read_timeout_s)}, so every "
                f"download longer than {_s(min(app.request_timeout_ms / 1000, proxy.read_timeout_s))} "
                "ends in a 504 instead of a file (clients must use /v1/download/initiate).",
            )
        )
    return sorted(found, key=lambda finding: finding.severity != "violation")


def _pod_findings(profile: Profile, pods: Pods) -> list[Finding]:
    """The Kubernetes rules: no SIGKILL inside a drain, no cut before the LB lets go, no
    scale-down flapping faster than a download."""
    found: list[Finding] = []

    def violation(rule: str, sentence: str) -> None:
        found.append(Finding("violation", rule, sentence))

    if pods.worker_grace_s < pods.worker_drain_s + KILL_MARGIN_S:
        violation(
            "worker-grace",
            f"The worker pods' terminationGracePeriodSeconds ({pods.worker_grace_s} s) does not outlast "
            f"WORKER_DRAIN_S ({pods.worker_drain_s} s) by {KILL_MARGIN_S} s, so Kubernetes SIGKILLs "
            "a draining worker before it hands its unfinished downloads back to the queue.",
        )
    if pods.api_grace_s < pods.pre_stop_s + API_SHUTDOWN_GRACE_S:
        violation(
            "api-grace",
            f"The API pods' terminationGracePeriodSeconds ({pods.api_grace_s} s) is shorter than the "
            f"preStop pause ({pods.pre_stop_s} s) plus uvicorn's graceful shutdown "
            f"({API_SHUTDOWN_GRACE_S} s), so requests in flight are killed instead of answered.",
        )
    if ALB_TARGETS & set(profile.targets) and profile.proxy.deregistration_delay_s < pods.pre_stop_s:
        violation(
            "pre-stop",
            f"The deregistration delay ({profile.proxy.deregistration_delay_s} s) is shorter than the "
            f"API pods' preStop pause ({pods.pre_stop_s} s), so the ALB drops a stopping pod's open "
            "connections while the pod still serves them.",
        )
    longest_s = profile.scenario.download_delay_max_ms / 1000
    for name, value in (
        ("KEDA cooldownPeriod", pods.cooldown_s),
        ("the workers' scale-down stabilizationWindowSeconds", pods.scale_down_window_s),
    ):
        if value < longest_s:
            violation(
                "cooldown",
                f"The {name} ({value} s) is shorter than a download (up to {_s(longest_s)}), so "
                "workers are removed between two waves of one burst and drain downloads they could finish.",
            )
    return found


def _s(seconds: float) -> str:
    return f"{seconds:g} s"


def budget_rows(profile: Profile, pods: Pods | None = None) -> list[tuple[str, str]]:
    """The budget as (setting, value) rows: printed by the CLI, tabled in docs/proxies.md.
    `pods`: the values read from manifests (default: those the profile derives)."""
    app, proxy = profile.app, profile.proxy
    rows = [
        ("proxy read/idle timeout", _s(proxy.read_timeout_s)),
        ("proxy connect timeout", _s(proxy.connect_timeout_s)),
        ("proxy idle reuse of app connections", _s(proxy.upstream_keepalive_s)),
        ("UVICORN_KEEPALIVE_S", _s(app.uvicorn_keepalive_s)),
        ("REQUEST_TIMEOUT_MS", f"{app.request_timeout_ms} ms"),
        ("SSE_HEARTBEAT_S", _s(app.sse_heartbeat_s)),
        ("SSE_MAX_STREAM_S", _s(app.sse_max_stream_s)),
        ("POLL_INTERVAL_S (Retry-After)", _s(app.poll_interval_s)),
        ("client body limit", f"{proxy.client_max_body_kb} KiB"),
        (
            "ALB deregistration delay",
            _s(proxy.deregistration_delay_s) if ALB_TARGETS & set(profile.targets) else "n/a",
        ),
        (
            "download delay range",
            f"{profile.scenario.download_delay_min_ms}-{profile.scenario.download_delay_max_ms} ms",
        ),
    ]
    if profile.kubernetes:  # the pods' side
        pods = pods or profile.kubernetes.pods()
        rows += [
            ("API preStop pause / grace period", f"{_s(pods.pre_stop_s)} / {_s(pods.api_grace_s)}"),
            (
                "WORKER_DRAIN_S / worker grace period",
                f"{_s(pods.worker_drain_s)} / {_s(pods.worker_grace_s)}",
            ),
            ("KEDA cooldown / scale-down window", f"{_s(pods.cooldown_s)} / {_s(pods.scale_down_window_s)}"),
        ]
    return rows


def budget_table(profiles: list[Profile]) -> str:
    """The budgets side by side as a Markdown table (docs/proxies.md embeds it; a test compares)."""
    rows = [budget_rows(profile) for profile in profiles]
    lines = [
        "| setting | " + " | ".join(f"`{p.name}`" for p in profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    for index, (name, _) in enumerate(rows[0]):
        lines.append(f"| {name} | " + " | ".join(row[index][1] for row in rows) + " |")
    return "\n".join(lines) + "\n"
