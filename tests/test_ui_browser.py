"""The downloads page (/ui) in a real browser against the real API, worker, Redis and S3.

Screenshots land in artifacts/ui/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Request, Route, expect

from service import keys
from tests.browser import Tab, chromium, open_tab, otlp_sink
from tests.support import TEST_BUCKET

pytestmark = pytest.mark.browser

DEMO = [70000, 70007, 70014]
STREAM = re.compile(r".*/v1/download/stream/.*")
STATUS = "/v1/download/status/"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def otlp_endpoint() -> Iterator[str]:
    """Request it before make_stack: the sink must outlive the processes that export to it."""
    with otlp_sink() as endpoint:
        yield endpoint


@pytest.fixture
def tabs(browser: Browser) -> Iterator[list[Tab]]:
    """Tabs opened by a test; their contexts are closed after it."""
    opened: list[Tab] = []
    yield opened
    for tab in opened:
        tab.page.context.close()


def open_ui(browser: Browser, tabs: list[Tab], base_url: str) -> Tab:
    tab = open_tab(browser, base_url)
    tabs.append(tab)
    tab.page.goto("/ui")
    expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
    return tab


def submit(tab: Tab, file_ids: list[int]) -> str:
    """Request files from the form; the new job's id (from the initiate response)."""
    page = tab.page
    page.fill("#file-ids", ", ".join(str(i) for i in file_ids))
    with page.expect_response("**/v1/download/initiate") as info:
        page.click("#submit")
    response = info.value
    assert response.status == 202, response.text()
    job_id = response.json()["jobId"]
    expect(row(tab, job_id)).to_be_visible()
    return job_id


def row(tab: Tab, job_id: str):
    return tab.page.locator(f'li.job[data-job-id="{job_id}"]')


def percent(tab: Tab, job_id: str) -> float:
    return float(row(tab, job_id).get_attribute("data-percent") or 0)


def result_bytes(stack, s3, job_id: str) -> bytes:
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    key = conn.hget(keys.job(job_id), "result_key")
    assert key, "the job has no result in Redis"
    return s3.get_object(Bucket=TEST_BUCKET, Key=key.decode())["Body"].read()


def test_page_is_served_under_a_strict_csp_and_documented(stack):
    with stack.client() as client:
        response = client.get("/ui")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["x-request-id"]
        csp = dict(
            part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";")
        )
        assert csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
        assert csp["connect-src"] == "'self'"
        assert "unsafe" not in response.headers["content-security-policy"]
        html = response.text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
        assert "<style" not in html and " style=" not in html, "inline style"
        assert client.get("/ui/config.json").json() == {"jaegerUrl": None, "pollIntervalS": 2}
        for asset in ("ui.js", "ui.css", "ui.svg"):
            assert client.get(f"/static/{asset}").status_code == 200
        paths = client.get("/openapi").json()["paths"]
        assert {"/ui", "/ui/config.json"} <= paths.keys()


def test_a_job_from_the_page_shows_live_progress_and_downloads_the_real_bytes(
    otlp_endpoint, make_stack, browser, tabs, s3
):
    stack = make_stack(
        DOWNLOAD_DELAY_MIN_MS="2400",
        DOWNLOAD_DELAY_MAX_MS="2400",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,  # tracing on, so the job has a trace id
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    tab = open_ui(browser, tabs, stack.url)
    page = tab.page
    expect(page.locator("#health")).to_have_attribute("data-state", "healthy")
    expect(page.locator("#health-text")).to_contain_text("storage ok")
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if STATUS in r.url else None)

    job_id = submit(tab, DEMO)
    job = row(tab, job_id)
    expect(job).to_have_attribute("data-mode", "live")
    # a partial value seen on the bar: progress arrives while the job runs, not only at the end
    page.wait_for_function(
        "id => { const p = +document.querySelector(`li[data-job-id='${id}'] progress`).value;"
        " return p > 0 && p < 100; }",
        arg=job_id,
        timeout=10_000,
    )
    tab.screenshot("job-running")
    expect(job).to_have_attribute("data-status", "completed", timeout=15_000)
    assert job.locator("progress").evaluate("p => p.value") == 100
    expect(job.locator(".progress-text")).to_contain_text("3 of 3 files · 100 %")
    link = job.locator("a.download")
    expect(link).to_be_visible()
    assert link.get_attribute("href") == f"/v1/download/{job_id}/file"
    expect(job.locator("button.cancel")).to_be_hidden()
    tab.screenshot("job-completed")
    assert polled == [], "the page polled although the stream worked"
    with stack.client() as client:
        trace_id = client.get(f"{STATUS}{job_id}").json()["traceId"]
    assert trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    expect(job.locator(".trace-id")).to_have_text(trace_id)
    expect(job.locator("a.trace-link")).to_be_hidden()  # no JAEGER_UI_URL: the id, no link

    with page.expect_download() as info:
        link.click()
    downloaded = Path(info.value.path()).read_bytes()
    assert downloaded == result_bytes(stack, s3, job_id)
    assert downloaded[:2] == b"PK"  # a zip of the three files
    tab.assert_clean()


def test_reload_mid_job_reattaches_and_the_job_finishes(make_stack, browser, tabs):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000")
    tab = open_ui(browser, tabs, stack.url)
    earlier = submit(tab, [70021])
    job_id = submit(tab, DEMO)
    page = tab.page
    page.wait_for_function(
        "id => +document.querySelector(`li[data-job-id='${id}']`).dataset.percent > 0", arg=job_id
    )
    before = percent(tab, job_id)
    assert before < 100

    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    # both jobs are back, newest first, and the running one is followed live again
    assert page.locator("li.job").evaluate_all("rows => rows.map(r => r.dataset.jobId)") == [job_id, earlier]
    job = row(tab, job_id)
    page.wait_for_function(
        "([id, p]) => +document.querySelector(`li[data-job-id='${id}']`).dataset.percent >= p",
        arg=[job_id, before],
    )
    if job.get_attribute("data-status") != "completed":
        expect(job).to_have_attribute("data-mode", "live")
    tab.screenshot("after-reload")
    expect(job).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(job.locator("a.download")).to_be_visible()
    expect(row(tab, earlier)).to_have_attribute("data-status", "completed")
    expect(row(tab, earlier).locator("a.download")).to_be_visible()
    tab.assert_clean()


def status_times(tab: Tab) -> list[float]:
    times: list[float] = []

    def seen(request: Request) -> None:
        if STATUS in request.url:
            times.append(time.monotonic())

    tab.page.on("request", seen)
    return times


def test_a_refused_stream_falls_back_to_polling_with_retry_after(make_stack, browser, tabs):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000", POLL_INTERVAL_S="1")
    tab = open_ui(browser, tabs, stack.url)
    tab.page.route(STREAM, lambda route: route.abort())
    polls = status_times(tab)
    job_id = submit(tab, DEMO)
    job = row(tab, job_id)
    expect(job).to_have_attribute("data-mode", "polling")
    expect(job).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(job.locator("a.download")).to_be_visible()
    assert percent(tab, job_id) == 100
    tab.screenshot("polling-fallback")
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert len(polls) >= 2 and min(gaps) >= 0.9, gaps  # Retry-After: 1 honoured between polls
    tab.assert_clean()


def test_a_stream_that_dies_mid_job_falls_back_to_polling(make_stack, browser, tabs):
    # The server ends each stream after 0.8 s; once the page has had live progress, its
    # reconnections are cut, as a proxy dropping the connection would.
    stack = make_stack(
        DOWNLOAD_DELAY_MIN_MS="3000",
        DOWNLOAD_DELAY_MAX_MS="3000",
        SSE_MAX_STREAM_S="0.8",
        SSE_RETRY_MS="200",
        POLL_INTERVAL_S="1",
    )
    tab = open_ui(browser, tabs, stack.url)
    cut = {"on": False}

    def maybe_cut(route: Route) -> None:
        if cut["on"]:
            route.abort()
        else:
            route.continue_()

    tab.page.route(STREAM, maybe_cut)
    job_id = submit(tab, DEMO)
    job = row(tab, job_id)
    expect(job).to_have_attribute("data-mode", "live")
    cut["on"] = True
    expect(job).to_have_attribute("data-mode", "polling", timeout=10_000)
    expect(job).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(job.locator("a.download")).to_be_visible()
    tab.assert_clean()


def test_more_running_jobs_than_streams_keep_the_page_responsive(make_stack, browser, tabs):
    # A browser holds at most 6 connections per host: the page streams at most 4 jobs and polls
    # the others, so a new request is not stuck behind streams until some job ends.
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="6000", DOWNLOAD_DELAY_MAX_MS="6000", POLL_INTERVAL_S="1")
    tab = open_ui(browser, tabs, stack.url)
    ids = [submit(tab, [70000 + 7 * i]) for i in range(7)]
    rows = tab.page.locator("li.job")
    modes = rows.evaluate_all("rows => rows.map(r => [r.dataset.status, r.dataset.mode])")
    assert all(status != "completed" for status, _ in modes), "a submission waited for a job to end"
    assert sum(1 for _, mode in modes if mode == "live") == 4, modes
    assert sum(1 for _, mode in modes if mode == "polling") == 3, modes
    tab.screenshot("many-jobs")
    for job_id in ids:
        expect(row(tab, job_id)).to_have_attribute("data-status", "completed", timeout=20_000)
        expect(row(tab, job_id).locator("a.download")).to_be_visible()
    tab.assert_clean()


def test_cancel_button_cancels_a_running_job(make_stack, browser, tabs):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="4000", DOWNLOAD_DELAY_MAX_MS="4000")
    tab = open_ui(browser, tabs, stack.url)
    page = tab.page
    job_id = submit(tab, DEMO)
    job = row(tab, job_id)
    expect(job).to_have_attribute("data-status", "processing")
    with page.expect_response(lambda r: r.request.method == "DELETE") as info:
        job.locator("button.cancel").click()
    assert info.value.status in (200, 202), info.value.text()
    expect(job).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(job.locator("button.cancel")).to_be_hidden()
    expect(job.locator("a.download")).to_be_hidden()
    expect(job.locator("button.remove")).to_be_visible()
    assert percent(tab, job_id) < 100
    with stack.client() as client:
        assert client.get(f"{STATUS}{job_id}").json()["status"] == "cancelled"
    tab.screenshot("job-cancelled")
    tab.assert_clean()


def test_errors_show_the_request_id(stack, browser, tabs):
    tab = open_ui(browser, tabs, stack.url)
    page = tab.page
    page.fill("#file-ids", "5")
    with page.expect_response("**/v1/download/initiate") as info:
        page.click("#submit")
    response = info.value
    assert response.status == 400
    request_id = response.headers["x-request-id"]
    box = page.locator("#form-error")
    expect(box).to_be_visible()
    expect(box).to_contain_text("greater than or equal to 10000")
    expect(box.locator(".request-id code")).to_have_text(request_id)
    assert page.locator("li.job").count() == 0
    tab.screenshot("form-error")

    # a remembered job the server no longer knows: the row says so, with the request id
    unknown = "00000000-0000-4000-8000-000000000000"
    page.evaluate(
        "id => localStorage.setItem('delineate.jobs', JSON.stringify([{id, fileIds: [70000]}]))", unknown
    )
    with page.expect_response(lambda r: f"{STATUS}{unknown}" in r.url) as info:
        page.reload()
    status_id = info.value.headers["x-request-id"]
    gone = row(tab, unknown)
    expect(gone).to_have_attribute("data-status", "gone")
    expect(gone.locator(".job-error")).to_contain_text("404")
    expect(gone.locator(".job-error .request-id code")).to_have_text(status_id)
    gone.locator("button.remove").click()
    expect(page.locator("li.job")).to_have_count(0)
    assert page.evaluate("() => localStorage.getItem('delineate.jobs')") == "[]"
    tab.assert_clean()


def test_csp_violations_are_detected(stack, browser, tabs):
    """The check the other tests rely on can fail: an inline script is refused and recorded."""
    tab = open_ui(browser, tabs, stack.url)
    tab.page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        " document.body.append(s); }"
    )
    assert tab.page.evaluate("() => window.ran") is None
    assert any(v.startswith("script-src") for v in tab.csp_violations())
    with pytest.raises(AssertionError):
        tab.assert_clean()


def test_trace_id_links_to_jaeger_when_configured(otlp_endpoint, make_stack, browser, tabs):
    stack = make_stack(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        JAEGER_UI_URL="http://jaeger.test:16686/",
    )
    with stack.client() as client:
        assert client.get("/ui/config.json").json()["jaegerUrl"] == "http://jaeger.test:16686"
    tab = open_ui(browser, tabs, stack.url)
    job_id = submit(tab, [70000])
    job = row(tab, job_id)
    expect(job).to_have_attribute("data-status", "completed", timeout=15_000)
    with stack.client() as client:
        trace_id = client.get(f"{STATUS}{job_id}").json()["traceId"]
    assert trace_id and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    expect(job.locator(".trace-id")).to_have_text(trace_id)
    expect(job.locator("a.trace-link")).to_have_attribute(
        "href", f"http://jaeger.test:16686/trace/{trace_id}"
    )
    tab.assert_clean()
