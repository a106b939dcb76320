"""Locust users that behave like Delineate's real clients, judged against a proxy's timeout.

Users (weights from --weights, e.g. `fast=4,poll=2,sse=2,webhook=1,legacy=0`):
- FastUser: a one-file job, followed by polling, then the 302 and the object from S3.
- PollingUser: a --slow-files job followed by polling, sleeping exactly `Retry-After`.
- SseUser: the same job followed on GET /v1/download/stream/{id}; reconnects with
  Last-Event-ID when the server ends a stream early, falls back to polling when it cannot.
- WebhookUser: sends `callbackUrl` pointing at a receiver this file
  starts, and waits for the call; the service must accept the receiver's address (its SSRF
  guard refuses loopback unless allowed). Without a delivery it falls back to polling and
  records a `no webhook` failure, so a service without webhooks shows as red, not as a hang.
- LegacyUser: POST /v1/download/start, which holds the request for the whole delay.

The users send their requests through Locust's own client rather than service.client, because
the load test must count, time and judge every single request that the Python client would
quietly repeat or resume; they share its SSE decoder (service.client.core.SSEDecoder).

Every request has a read timeout equal to the proxy's limit (proxylimit.py): what the proxy
would cut is recorded as `proxy-timeout 504 ...` (524 for Cloudflare). When the run ends the
thresholds (thresholds.py) set the exit code and report.py writes report.md and report.png.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:3000 -u 20 -r 10 -t 30s \
        --proxy-profile nginx --weights fast=4,poll=2,sse=2 --csv out/locust --html out/locust.html \
        --report-dir out
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import FastHttpUser, events, task
from locust.clients import HttpSession
from locust.contrib.fasthttp import LocustBadStatusCode
from locust.runners import WorkerRunner

import proxylimit
import report
import s3link
import thresholds
from receiver import WebhookReceiver
from service.client.core import SSEDecoder
from tracker import JobTracker

log = logging.getLogger("delineate.loadtest")

DEMO_FILE_IDS = tuple(range(70_000, 70_064, 7))  # what `make run` seeds (service.harness)
TERMINAL = {"completed", "failed", "cancelled"}
CONNECT_TIMEOUT_S = 5.0

INITIATE = "/v1/download/initiate"
STATUS = "/v1/download/status/[id]"
STREAM = "/v1/download/stream/[id]"
FILE = "/v1/download/[id]/file"
START = thresholds.LEGACY_ROUTE
SSE_GAP = "SSE gap between reads"
DEFAULT_WEIGHTS = "fast=4,poll=2,sse=2,webhook=1,legacy=0"
# Think time between two jobs of one user, in seconds: the "delay profile" of the clients.
PACING = {"none": (0.0, 0.0), "short": (0.2, 1.0), "steady": (1.0, 3.0), "human": (5.0, 15.0)}


@dataclass
class Run:
    """Settings of this run (from the command line) and what the users observed."""

    limit: proxylimit.ProxyLimit = field(default_factory=lambda: proxylimit.ProxyLimit("nginx", 60.0))
    pacing: tuple[float, float] = PACING["short"]
    slow_files: int = 5
    follow_limit_s: float = 600.0
    webhook_wait_s: float = 30.0
    s3_address: str = ""  # host:port to send presigned S3 requests to (their Host kept)
    tracker: JobTracker = field(default_factory=JobTracker)
    receiver: WebhookReceiver | None = None
    sampler: Any = None

    def think_time(self) -> float:
        return random.uniform(*self.pacing)


RUN = Run()


def parse_pairs(text: str) -> dict[str, float]:
    """`a=1,b=2` -> {"a": 1.0, "b": 2.0}; names keep their case."""
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        pairs[name.strip()] = float(value)
    return pairs


def _timed_out(error: BaseException) -> bool:
    """A read that waited for the whole limit, in either session's words (geventhttpclient
    wraps its socket's timeout in RetriesExceeded, as `original`)."""
    error = getattr(error, "original", None) or error
    return isinstance(error, (TimeoutError, gevent.Timeout, requests.exceptions.Timeout))


def retry_after(response: Any, default: float = 1.0) -> float:
    try:
        return max(float(response.headers.get("Retry-After", default)), 0.0)
    except (TypeError, ValueError):
        return default


class ApiUser(FastHttpUser):
    """Shared client behaviour: judged requests, starting and following jobs.

    Requests go through Locust's FastHttpSession (geventhttpclient), not its requests-based
    HttpSession: a fifth of the CPU per request (240 against 1,100 us, docs/benchmarks.md). The
    load generator shares the service's cores, and what it spends itself it reports as the
    service's latency. Its timeouts are per user: `connection_timeout`, and `network_timeout`
    set to the proxy's limit by configure().
    """

    abstract = True
    key = ""
    connection_timeout = CONNECT_TIMEOUT_S

    def wait_time(self) -> float:
        return RUN.think_time()

    def call(
        self, method: str, path: str, name: str, expect: tuple[int, ...], client: Any = None, **kwargs: Any
    ) -> tuple[Any, bool]:
        """One request, failed when the proxy would cut it or the status is not expected."""
        limit = RUN.limit
        started = time.monotonic()
        session = client or self.client
        with session.request(method, path, name=name, catch_response=True, **kwargs) as response:
            elapsed = time.monotonic() - started
            error = getattr(response, "error", None)
            if isinstance(error, LocustBadStatusCode):  # a status, judged below like any other
                error = None
            if error is not None and _timed_out(error) and elapsed >= limit.timeout_s * 0.99:
                response.failure(limit.failure("no response byte in time"))
                return response, False
            if error is not None:
                response.failure(f"{type(error).__name__}")
                return response, False
            verdict = limit.judge(elapsed, response.status_code)
            if verdict is not None:
                response.failure(verdict)
                return response, False
            if response.status_code not in expect:
                response.failure(f"unexpected HTTP {response.status_code}")
                return response, False
            response.success()
            return response, True

    def initiate(self, file_ids: list[int], extra: dict[str, Any] | None = None) -> str | None:
        body = {"file_ids": file_ids, **(extra or {})}
        response, ok = self.call("POST", INITIATE, INITIATE, (202,), json=body)
        if not ok:
            if response.status_code in (429, 503):
                gevent.sleep(retry_after(response))
            return None
        job_id = response.json()["jobId"]
        RUN.tracker.start(job_id)
        return job_id

    def poll(self, job_id: str) -> dict[str, Any] | None:
        """Poll until terminal, sleeping exactly what Retry-After says (1 s after an error)."""
        deadline = time.monotonic() + RUN.follow_limit_s
        while time.monotonic() < deadline:
            response, ok = self.call("GET", f"/v1/download/status/{job_id}", STATUS, (200,))
            if ok:
                body = response.json()
                if body["status"] in TERMINAL:
                    return body
            gevent.sleep(retry_after(response))
        return None

    def finish(self, job_id: str, kind: str, outcome: dict[str, Any] | None, fetch: bool = False) -> None:
        """Record the job's end as a JOB entry (its age) and fetch the result when completed."""
        status = outcome["status"] if outcome else "unfinished"
        age_s = RUN.tracker.finish(job_id, status) if outcome else 0.0
        self.environment.events.request.fire(
            request_type="JOB",
            name=kind,
            response_time=age_s * 1000,
            response_length=0,
            exception=None if status == "completed" else Exception(f"job ended {status}"),
            context={},
        )
        if status != "completed":
            return
        response, ok = self.call("GET", f"/v1/download/{job_id}/file", FILE, (302,), allow_redirects=False)
        if ok and fetch:
            # straight to S3, as a browser following the redirect: not through the proxy
            url, headers = s3link.presigned_request(response.headers["Location"], RUN.s3_address)
            name = "S3 presigned object"
            with self.client.get(url, headers=headers, name=name, catch_response=True) as got:
                if got.status_code != 200 or not got.content.startswith(b"PK"):
                    got.failure(f"S3 answered {got.status_code}")


class FastUser(ApiUser):
    """Small jobs: the path that finishes within a couple of polls."""

    key = "fast"

    @task
    def small_job(self) -> None:
        job_id = self.initiate([random.choice(DEMO_FILE_IDS)])
        if job_id:
            self.finish(job_id, "fast job (poll)", self.poll(job_id), fetch=True)


class PollingUser(ApiUser):
    """Long jobs followed by polling with Retry-After."""

    key = "poll"

    @task
    def slow_job(self) -> None:
        job_id = self.initiate(random.sample(DEMO_FILE_IDS, min(RUN.slow_files, len(DEMO_FILE_IDS))))
        if job_id:
            self.finish(job_id, "slow job (poll)", self.poll(job_id))


class SseUser(ApiUser):
    """Long jobs followed on the event stream, as the browser's EventSource does.

    The stream itself goes through Locust's requests-based session: geventhttpclient reads a
    streamed body only in blocks of a fixed size, so an event would wait for the next ones.
    """

    key = "sse"

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.streams = HttpSession(self.host, environment.events.request, self)

    @task
    def slow_job(self) -> None:
        job_id = self.initiate(random.sample(DEMO_FILE_IDS, min(RUN.slow_files, len(DEMO_FILE_IDS))))
        if job_id:
            self.finish(job_id, "slow job (sse)", self.follow(job_id))

    def follow(self, job_id: str) -> dict[str, Any] | None:
        last_id: str | None = None
        deadline = time.monotonic() + RUN.follow_limit_s
        while time.monotonic() < deadline:
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            response, ok = self.call(
                "GET",
                f"/v1/download/stream/{job_id}",
                STREAM,
                (200, 204),
                client=self.streams,
                stream=True,
                headers=headers,
                timeout=(CONNECT_TIMEOUT_S, RUN.limit.timeout_s),
            )
            if not ok:
                response.close()
                return self.poll(job_id)  # the documented fallback
            if response.status_code == 204:  # finished, nothing missed: ask once
                response.close()
                return self.poll(job_id)
            try:
                outcome, last_id = self.read(response, last_id)
            finally:
                response.close()
            if outcome is not None:
                return outcome
        return None

    def read(self, response: Any, last_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """Read events until the terminal one; a read gap longer than the limit is a cut."""
        limit = RUN.limit
        decoder, buffer = SSEDecoder(), b""
        last_byte = opened = time.monotonic()
        max_gap = 0.0
        failure: Exception | None = None
        outcome: dict[str, Any] | None = None
        try:
            for chunk in response.iter_content(chunk_size=None):
                now = time.monotonic()
                max_gap, last_byte = max(max_gap, now - last_byte), now
                buffer += chunk
                while b"\n" in buffer and outcome is None:
                    raw, buffer = buffer.split(b"\n", 1)
                    event = decoder.feed(raw.rstrip(b"\r").decode())  # heartbeats give None
                    if event is None:
                        continue
                    last_id = event.id or last_id
                    if event.event in TERMINAL:
                        outcome = {"status": event.event, **event.data}
                if outcome is not None:
                    break
        except requests.exceptions.RequestException as exc:
            gap = time.monotonic() - last_byte
            max_gap = max(max_gap, gap)
            failure = limit.failure("no SSE byte in time") if gap >= limit.timeout_s * 0.99 else exc
        if failure is None and max_gap > limit.timeout_s:
            failure = limit.failure("no SSE byte in time")
        RUN.tracker.sse_gap(max_gap)
        self.environment.events.request.fire(
            request_type="SSE",
            name=SSE_GAP,
            response_time=max_gap * 1000,
            response_length=0,
            exception=failure,
            context={"stream_s": time.monotonic() - opened},
        )
        return outcome, last_id


class WebhookUser(ApiUser):
    """Long jobs announced by a webhook to the receiver this locustfile runs."""

    key = "webhook"

    @task
    def slow_job(self) -> None:
        receiver = RUN.receiver
        if receiver is None:
            return
        job_id = self.initiate(
            random.sample(DEMO_FILE_IDS, min(RUN.slow_files, len(DEMO_FILE_IDS))),
            extra={"callbackUrl": receiver.url},
        )
        if not job_id:
            return
        started = time.monotonic()
        try:
            delivered = receiver.expect(job_id).get(timeout=RUN.webhook_wait_s)
        except gevent.Timeout:
            delivered = None
        finally:
            receiver.forget(job_id)
        self.environment.events.request.fire(
            request_type="WEBHOOK",
            name="callback received",
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=None if delivered else Exception(f"no webhook within {RUN.webhook_wait_s:g} s"),
            context={},
        )
        if delivered and delivered.get("status") in TERMINAL:
            self.finish(job_id, "slow job (webhook)", delivered)
        else:
            self.finish(job_id, "slow job (webhook)", self.poll(job_id))


class LegacyUser(ApiUser):
    """The deprecated synchronous call: held for the whole download, cut by proxies."""

    key = "legacy"

    @task
    def legacy_download(self) -> None:
        self.call("POST", START, START, (200,), json={"file_id": random.choice(DEMO_FILE_IDS)})


USER_CLASSES: list[type[ApiUser]] = [FastUser, PollingUser, SseUser, WebhookUser, LegacyUser]


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("delineate")
    group.add_argument("--proxy-profile", default="", help="profile in proxy/profiles.toml (nginx, ...)")
    group.add_argument(
        "--proxy-timeout-s", type=float, default=0.0, help="limit in s (overrides the profile)"
    )
    group.add_argument("--weights", default=DEFAULT_WEIGHTS, help="user weights, e.g. fast=4,poll=2,sse=2")
    group.add_argument("--delay-profile", default="short", choices=sorted(PACING), help="think time")
    group.add_argument("--slow-files", type=int, default=5, help="files per slow job")
    group.add_argument("--p99-ms", type=float, default=1000.0, help="p99 bound for each API route")
    group.add_argument("--route-p99-ms", default="", help="per-route bounds: /v1/download/initiate=200,...")
    group.add_argument("--max-error-ratio", type=float, default=0.01, help="allowed failures/requests")
    group.add_argument("--follow-limit-s", type=float, default=600.0, help="give up following a job after")
    group.add_argument("--webhook-host", default="127.0.0.1", help="address the service reaches us on")
    group.add_argument(
        "--webhook-wait-s", type=float, default=30.0, help="wait for a callback before polling"
    )
    group.add_argument("--report-dir", default="loadtest/results", help="where report.md/png go")
    group.add_argument(
        "--s3-address", default="", help="host:port to fetch presigned links from, keeping their Host"
    )


@events.init.add_listener
def configure(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    RUN.limit = proxylimit.load(options.proxy_profile or None, options.proxy_timeout_s or None)
    ApiUser.network_timeout = RUN.limit.timeout_s  # read before any user exists
    RUN.pacing = PACING[options.delay_profile]
    RUN.slow_files = options.slow_files
    RUN.follow_limit_s = options.follow_limit_s
    RUN.webhook_wait_s = options.webhook_wait_s
    RUN.s3_address = options.s3_address
    weights = parse_pairs(options.weights)
    unknown = set(weights) - {cls.key for cls in USER_CLASSES}
    if unknown:
        raise SystemExit(
            f"--weights names unknown users {sorted(unknown)}; known: fast, poll, sse, webhook, legacy"
        )
    for cls in USER_CLASSES:
        cls.weight = weights.get(cls.key, 0)
    environment.user_classes = [cls for cls in USER_CLASSES if cls.weight > 0]
    if not environment.user_classes:
        raise SystemExit("--weights gives every user weight 0")
    if WebhookUser.weight > 0:
        RUN.receiver = WebhookReceiver(advertised_host=options.webhook_host)
        RUN.receiver.start()
    log.info(
        "judging against %s (%s after %g s); weights %s; think time %s",
        RUN.limit.profile,
        RUN.limit.label,
        RUN.limit.timeout_s,
        {cls.key: cls.weight for cls in environment.user_classes},
        options.delay_profile,
    )


def sample(environment: Any) -> None:
    """Once a second: jobs in flight, the worst async route's rolling p99, total failures."""
    while True:
        routes = [e for e in thresholds.api_routes(environment.stats) if e.name != START]
        p99 = max((e.get_current_response_time_percentile(0.99) or 0 for e in routes), default=0)
        total = environment.stats.total
        RUN.tracker.sample(p99, total.num_failures, total.num_requests)
        gevent.sleep(1)


@events.test_start.add_listener
def start_sampler(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner) and RUN.sampler is None:
        RUN.tracker = JobTracker()
        RUN.sampler = gevent.spawn(sample, environment)


@events.quitting.add_listener
def judge_run(environment: Any, **_: Any) -> None:
    """Evaluate the thresholds, write report.md/png and set the exit code."""
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    if RUN.sampler is not None:
        RUN.sampler.kill(block=False)
        total = environment.stats.total
        RUN.tracker.sample(
            RUN.tracker.samples[-1].p99_ms if RUN.tracker.samples else 0,
            total.num_failures,
            total.num_requests,
        )
    if RUN.receiver is not None:
        RUN.receiver.stop()
    options = environment.parsed_options
    bounds = {START: RUN.limit.timeout_s * 1000, **parse_pairs(options.route_p99_ms)}
    checks = thresholds.evaluate(
        environment.stats,
        RUN.tracker,
        p99_ms=options.p99_ms,
        route_p99_ms=bounds,
        max_error_ratio=options.max_error_ratio,
    )
    settings = {
        "host": str(environment.host),
        "proxy limit": f"{RUN.limit.profile}: {RUN.limit.label} after {RUN.limit.timeout_s:g} s",
        "users": str(options.num_users),
        "weights": options.weights,
        "think time": f"{options.delay_profile} {RUN.pacing}",
        "run time": str(options.run_time),
    }
    path = report.write(Path(options.report_dir), environment.stats, RUN.tracker, checks, settings)
    environment.process_exit_code = thresholds.exit_code(checks)
    verdict = "PASS" if environment.process_exit_code == 0 else "FAIL"
    print(f"\nThresholds: {verdict} (report: {path})\n{thresholds.table(checks)}\n", flush=True)
