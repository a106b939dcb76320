"""service.client against the real stack: the whole flow sync and async, its typed errors, a
proxy cutting the stream mid-job, webhooks checked with the signer's own code, the examples in
docs/client.md, and a client generated from /openapi by openapi-python-client.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from service import client as delineate
from service.harness import free_port, wait_until
from service.proxy.profiles import load_profile
from service.webhooks import signature
from tests.hooks import SECRET, WEBHOOKS, Receiver
from tests.proxies import proxy_factory, wait_for_workers
from tests.support import ROOT

CUT_S = load_profile("test").proxy.read_timeout_s
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"


# ------------------------------------------------------------------ no server's dependencies


def test_the_client_needs_only_httpx():
    """Importing service.client loads nothing that `import httpx` does not (and no server code)."""
    probe = (
        "import sys; base = set(sys.modules); import httpx; after_httpx = set(sys.modules); "
        "import service.client; extra = set(sys.modules) - after_httpx; "
        "print(sorted(m for m in extra if not m.startswith('service')))"
        "; print(sorted(m for m in extra if m.startswith('service')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    other, ours = (json.loads(line.replace("'", '"')) for line in out.stdout.splitlines())
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in other), other
    assert set(ours) <= {
        "service",
        "service.backoff",
        "service.client",
        "service.client.aio",
        "service.client.core",
        "service.client.sync",
        "service.webhooks",
        "service.webhooks.signature",
    }, ours


# ------------------------------------------------------------------ signatures


def test_signatures_match_the_reference_library_both_ways():
    payload = json.dumps({"id": "msg_1", "type": "download.completed", "data": {"jobId": "j"}})
    now = datetime.now(UTC)
    ours = signature.Signer(SECRET).sign("msg_1", now, payload)
    assert ours == Webhook(SECRET).sign("msg_1", now, payload)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": ours,
    }
    assert Webhook(SECRET).verify(payload, headers) == json.loads(payload)
    # Rotation: several signatures, one of them ours; header names in any case.
    rotated = {k.title(): v for k, v in headers.items()} | {"Webhook-Signature": f"v1,AAAA {ours}"}
    assert delineate.verify_webhook(SECRET, payload.encode(), rotated) == json.loads(payload)

    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    stale = headers | {"webhook-timestamp": str(int(now.timestamp()) - 301)}
    stale["webhook-signature"] = signature.Signer(SECRET).sign(
        "msg_1", int(stale["webhook-timestamp"]), payload
    )
    for secret, body, hdrs in [
        (other, payload, headers),  # another secret
        (SECRET, payload.replace("completed", "cancelled"), headers),  # a changed body
        (SECRET, payload, {k: v for k, v in headers.items() if k != "webhook-id"}),  # a header missing
        (SECRET, payload, stale),  # correctly signed, but too old: a replay
    ]:
        with pytest.raises(delineate.InvalidSignature):
            delineate.verify_webhook(secret, body, hdrs)


# ------------------------------------------------------------------ the flow on the shared stack


def test_sync_flow_and_typed_errors(stack, tmp_path):
    seen: list[delineate.Event] = []
    with delineate.Client(stack.url) as client:
        job = client.initiate([70000, 70007])
        assert job.status == "queued" and job.total_file_ids == 2 and job.request_id
        done = client.wait(job, timeout=30, on_event=seen.append)
        assert done.status == "completed" and done.done == done.total == 2 and done.size
        names = [event.event for event in seen]
        assert names[0] == "snapshot" and "completed" in names, names
        assert client.status(job.job_id).body == done.body

        target = tmp_path / "bundle.zip"
        assert client.download(job, target) == done.size == target.stat().st_size
        assert target.read_bytes()[:2] == b"PK" and not (tmp_path / "bundle.zip.part").exists()
        buffer = io.BytesIO()
        assert client.download(done, buffer) == done.size and buffer.getvalue() == target.read_bytes()

        with pytest.raises(delineate.Conflict) as finished:
            client.cancel(job)
        assert finished.value.status == 409 and finished.value.request_id
        with pytest.raises(delineate.NotFound) as missing:
            client.wait(UNKNOWN_JOB, timeout=10)
        assert missing.value.status == 404 and not missing.value.gone and missing.value.request_id
        with pytest.raises(delineate.BadRequest) as bad:
            client.initiate([1])
        assert bad.value.status == 400 and "file_ids" in bad.value.message and bad.value.request_id
    with delineate.Client(f"http://127.0.0.1:{free_port()}", retries=0) as nobody:
        with pytest.raises(delineate.Unavailable) as down:
            nobody.status(UNKNOWN_JOB)
        assert down.value.status is None


def test_async_flow(stack):
    async def flow() -> None:
        async with delineate.AsyncClient(stack.url) as client:
            jobs = [await client.initiate([file_id]) for file_id in (70014, 70021)]
            finished = await asyncio.gather(*(client.wait(job, timeout=30) for job in jobs))
            assert [status.status for status in finished] == ["completed", "completed"]
            buffer = io.BytesIO()
            assert await client.download(jobs[0], buffer) == finished[0].size
            assert buffer.getvalue()[:2] == b"PK"
            with pytest.raises(delineate.NotFound):
                await client.wait(UNKNOWN_JOB, timeout=10)
            with pytest.raises(delineate.Conflict):
                await client.cancel(jobs[1])

    asyncio.run(flow())


# ------------------------------------------------------------------ limits, cancelling, webhooks


@pytest.mark.slow
def test_rate_limit_cancel_and_webhooks(make_stack):
    """No worker at first, so jobs stay queued: the per-client limit answers 429, a cancelled job
    ends `wait` with JobCancelled; then a worker, and a webhook checked with verify_webhook; then
    the rate limit, waited out and repeated by a client with retries."""
    stack = make_stack(
        workers=0,
        PER_CLIENT_MAX_ACTIVE_JOBS="1",
        RATE_LIMIT_MAX_REQUESTS="20",
        RATE_LIMIT_WINDOW_MS="2000",
        **WEBHOOKS,
    )
    receiver = Receiver()
    try:
        with delineate.Client(stack.url, retries=0) as client:
            queued = client.initiate([70000])
            with pytest.raises(delineate.RateLimited) as limited:
                client.initiate([70007])
            assert limited.value.status == 429 and limited.value.retry_after and limited.value.request_id
            cancelled = client.cancel(queued)
            assert cancelled.status == "cancelled"
            with pytest.raises(delineate.JobCancelled) as ended:
                client.wait(queued, timeout=10)
            assert ended.value.status.status == "cancelled"
            with pytest.raises(delineate.Conflict):
                client.download(queued, io.BytesIO())

            stack.add_worker()
            hooked = client.initiate([70014], callback_url=receiver.url)
            assert client.wait(hooked, timeout=30).status == "completed"
            [(headers, body)] = receiver.for_job(hooked.job_id)
            event = delineate.verify_webhook(SECRET, body, headers)
            assert event["type"] == "download.completed" and event["data"]["jobId"] == hooked.job_id
            with pytest.raises(delineate.InvalidSignature):
                delineate.verify_webhook(SECRET, body.replace(b"completed", b"cancelled"), headers)
    finally:
        receiver.server.shutdown()

    # Spend the rate limit, then initiate with retries: the client waits out each 429's
    # Retry-After and repeats with the same Idempotency-Key, so one job comes of it.
    sent: list[tuple[float, str | None]] = []
    answers: list[tuple[float, int, str | None]] = []
    hooks = {
        "request": [lambda request: sent.append((time.monotonic(), request.headers.get("idempotency-key")))],
        "response": [
            lambda response: answers.append(
                (time.monotonic(), response.status_code, response.headers.get("retry-after"))
            )
        ],
    }
    with delineate.Client(stack.url, retries=3, event_hooks=hooks) as patient, stack.client() as raw:
        for _ in range(3):  # the window may turn between spending it and initiating: try again
            sent.clear()
            answers.clear()
            while raw.get(f"/v1/download/status/{UNKNOWN_JOB}").status_code != 429:
                pass
            job = patient.initiate([70021])
            if answers[0][1] == 429:
                break
    codes = [code for _, code, _ in answers]
    assert codes[0] == 429 and codes[-1] == 202 and set(codes[:-1]) == {429}, answers
    assert len({key for _, key in sent}) == 1 and sent[0][1], f"one Idempotency-Key for every repeat: {sent}"
    waits = [(at, float(wait)) for at, _, wait in answers[:-1]]
    assert all(again >= at + wait for (at, wait), (again, _) in zip(waits, sent[1:], strict=True)), answers
    assert job.status == "queued"
    assert patient_wait(stack, job).status == "completed"  # ends before the stack stops


def patient_wait(stack, job: delineate.Job) -> delineate.Status:
    with delineate.Client(stack.url) as client:
        return client.wait(job, timeout=30)


# ------------------------------------------------------------------ a proxy cutting the stream


@pytest.fixture
def proxied(make_stack, tmp_path):
    with proxy_factory(make_stack, tmp_path / "proxies") as make:
        yield make


@pytest.mark.slow
def test_a_proxy_cutting_the_stream_never_reaches_the_caller(proxied):
    """nginx cuts a stream after CUT_S without a byte; the heartbeat is slower than that and each
    job is silent for longer. A three-file job: the client resumes with Last-Event-ID and gets
    every event once. A one-file job: every resumed stream is cut empty, so the client polls.
    All return `completed` (Client and AsyncClient, four jobs at once), and nginx logged cuts."""
    delay_ms = str(int((CUT_S + 1) * 3 * 1000))  # three silent stretches of CUT_S + 1 s
    stack, proxy = proxied(
        "nginx",
        SSE_HEARTBEAT_S=str(int(CUT_S + 3)),
        SSE_RETRY_MS="200",
        POLL_INTERVAL_S="1",
        DOWNLOAD_DELAY_MIN_MS=delay_ms,
        DOWNLOAD_DELAY_MAX_MS=delay_ms,
    )
    wait_for_workers(stack, 1)
    jobs = {"resume": [70000, 70007, 70014], "poll": [70021]}
    seen: dict[str, list[delineate.Event]] = {}
    results: dict[str, Any] = {}

    answers: list[tuple[float, str, str | None]] = []  # (when, path, Retry-After) for each answer

    def record(response: httpx.Response) -> None:
        answers.append((time.monotonic(), response.url.path, response.headers.get("retry-after")))

    def follow_sync(name: str) -> None:
        seen[f"sync {name}"] = events = []
        hooks = {"response": [record]} if name == "poll" else {}
        with delineate.Client(proxy.url, event_hooks=hooks) as client:
            job = client.initiate(jobs[name])
            try:
                results[f"sync {name}"] = client.wait(job, timeout=60, on_event=events.append).status
            except Exception as exc:
                results[f"sync {name}"] = exc

    async def follow_async(client: delineate.AsyncClient, name: str) -> None:
        seen[f"async {name}"] = events = []
        job = await client.initiate(jobs[name])
        try:
            results[f"async {name}"] = (await client.wait(job, timeout=60, on_event=events.append)).status
        except Exception as exc:
            results[f"async {name}"] = exc

    async def both_async() -> None:
        async with delineate.AsyncClient(proxy.url) as client:
            await asyncio.gather(*(follow_async(client, name) for name in jobs))

    threads = [threading.Thread(target=follow_sync, args=(name,)) for name in jobs]
    threads.append(threading.Thread(target=asyncio.run, args=(both_async(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == dict.fromkeys(seen, "completed") and len(results) == 4, results
    assert "upstream timed out" in proxy.error_log(), "nginx never cut a stream: this proves nothing"

    for kind in ("sync", "async"):
        streamed = [event for event in seen[f"{kind} resume"] if event.id]  # a polled status has no id
        names = [event.event for event in streamed]
        assert names.count("snapshot") == 1, f"{kind}: a reconnect started afresh, not resumed: {names}"
        ids = [event.id for event in streamed[1:]]
        assert len(ids) == len(set(ids)), f"{kind}: an event came twice: {streamed}"
        assert names.count("progress") == 3 and names[-1] == "completed", f"{kind}: {names}"

        polled = seen[f"{kind} poll"]
        names = [event.event for event in polled if event.id]
        assert "progress" not in names and "completed" not in names, f"{kind}: never cut: {names}"
        assert polled[-1].event == "snapshot" and polled[-1].id is None, f"{kind}: did not poll"
        assert polled[-1].data["status"] == "completed"
    # The poller waited at least what each answer's Retry-After said (a lower bound: load only adds).
    polls = [(at, wait) for at, path, wait in answers if path.startswith("/v1/download/status/")]
    assert polls, "the poller never polled"
    pairs = itertools.pairwise(polls)
    assert all(later - at >= float(wait) for (at, wait), (later, _) in pairs if wait), polls


# ------------------------------------------------------------------ docs/client.md


def doc_blocks() -> list[str]:
    text = (ROOT / "docs" / "client.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_documented_examples_run(stack, monkeypatch, capsys):
    blocks = doc_blocks()
    assert len(blocks) == 3, "docs/client.md: the blocking, asyncio and webhook examples"
    monkeypatch.setenv("DELINEATE_URL", stack.url)
    namespaces = []
    for number, block in enumerate(blocks):
        namespace: dict[str, Any] = {"__name__": f"docs_client_{number}"}
        exec(compile(block, f"docs/client.md block {number + 1}", "exec"), namespace)
        namespaces.append(namespace)
    printed = capsys.readouterr().out
    assert "completed," in printed and "no such job" in printed
    assert "['completed', 'completed', 'completed']" in printed
    assert "cancelled: cancelled" in printed or "already finished" in printed  # a very quick worker

    on_webhook = namespaces[2]["on_webhook"]
    body = json.dumps({"id": "msg_9", "data": {"jobId": "j", "status": "completed"}}).encode()
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_9",
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature.Signer(SECRET).sign("msg_9", stamp, body),
    }
    assert on_webhook(SECRET, body, headers) == (204, "msg_9: job j completed")
    assert on_webhook(SECRET, body + b" ", headers)[0] == 400


# ------------------------------------------------------------------ a generated client


def test_openapi_generates_a_working_client(stack, tmp_path):
    """openapi-python-client turns /openapi into a package that completes a job."""
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{stack.url}/openapi", timeout=10).content)
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")
    package = f"delineate_generated_{uuid.uuid4().hex[:8]}"
    generator = Path(sys.executable).with_name("openapi-python-client")
    args = [str(generator), "generate", "--path", str(spec), "--output-path", str(tmp_path / package)]
    done = subprocess.run(
        [*args, "--meta", "none", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        generated = importlib.import_module(package)
        api = importlib.import_module(f"{package}.api.default")
        models = importlib.import_module(f"{package}.models")
        # one module per operation, named by its operationId (service/api/openapi.py)
        initiate = importlib.import_module(f"{api.__name__}.initiate")
        status = importlib.import_module(f"{api.__name__}.status")
        file = importlib.import_module(f"{api.__name__}.file")
        with generated.Client(base_url=stack.url, raise_on_unexpected_status=True) as client:
            accepted = initiate.sync(client=client, body=models.InitiateRequest(file_ids=[70028]))
            assert accepted.status.value == "queued", accepted
            job_id = uuid.UUID(accepted.job_id)

            def finished() -> Any:
                body = status.sync(job_id, client=client)
                return body if body.status.value in ("completed", "failed", "cancelled") else None

            final = wait_until(finished, 30, f"generated client: job {job_id}", retry_on=())
            assert final.status.value == "completed" and final.size
            redirect = file.sync_detailed(job_id, client=client)
            assert redirect.status_code == 302
            with httpx.Client(timeout=10) as s3:
                assert s3.get(redirect.headers["location"]).content[:2] == b"PK"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
