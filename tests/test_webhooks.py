"""Signed webhooks: real deliveries to a receiver on loopback, verified independently.

The receiver checks every delivery with the Standard Webhooks reference library and with the
snippet published in docs/webhooks.md, so the signing, the docs and the retries are proven
against the same bytes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.harness import wait_until
from service.settings import load_settings
from service.webhooks import guard
from tests.hooks import SECRET, WEBHOOKS, Receiver
from tests.jobs import initiate_json, wait_for
from tests.support import ROOT

FAST = {**WEBHOOKS, "WEBHOOK_MAX_ATTEMPTS": "3"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.server.shutdown()


def docs_verify() -> Any:
    """The `verify` function from docs/webhooks.md, executed as published."""
    text = (ROOT / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code, "docs/webhooks.md lost its Python snippet"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "docs/webhooks.md", "exec"), namespace)
    return namespace["verify"]


@pytest.mark.slow
def test_completed_job_is_delivered_signed_and_recorded(make_stack, receiver):
    stack = make_stack(**FAST)
    with stack.client() as client:
        job_id = initiate_with_callback(client, [70000, 70007], receiver.url)
        final = wait_for(client, job_id)
        [(headers, body)] = receiver.for_job(job_id)
        event = Webhook(SECRET).verify(body, headers)  # the scheme's reference implementation
        assert event == docs_verify()(body, headers, SECRET)  # and the documented snippet
        assert event["type"] == "download.completed" and event["id"] == headers["webhook-id"]
        assert event["data"]["jobId"] == job_id and event["data"]["status"] == "completed"
        assert event["data"]["downloadUrl"] == final["downloadUrl"] == f"/v1/download/{job_id}/file"
        body_after = wait_until_webhook(client, job_id, "delivered")
        assert body_after["webhook"]["attempts"] == 1 and body_after["webhook"]["lastStatus"] == 204
        assert body_after["webhook"]["eventId"] == headers["webhook-id"]

        # a forged or replayed delivery fails the documented check
        tampered = body.replace(b'"completed"', b'"cancelled"')
        with pytest.raises(ValueError, match="signature"):
            docs_verify()(tampered, headers, SECRET)
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(tampered, headers)
        stale = {**headers, "webhook-timestamp": str(int(time.time()) - 301)}
        with pytest.raises(ValueError, match="tolerance"):
            docs_verify()(body, stale, SECRET)
    logs = stack.api.output() + "".join(worker.output() for worker in stack.workers)
    assert "do-not-log" not in logs and SECRET.removeprefix("whsec_") not in logs


@pytest.mark.slow
def test_failed_and_cancelled_jobs_are_announced_too(make_stack, receiver):
    stack = make_stack(**FAST, DOWNLOAD_DELAY_MIN_MS="20000", DOWNLOAD_DELAY_MAX_MS="20000")
    with stack.client() as client:
        running = initiate_with_callback(client, [70000], receiver.url)
        wait_for(client, running, {"processing"})
        assert client.delete(f"/v1/download/{running}").status_code == 200
        [(headers, body)] = receiver.for_job(running)
        assert Webhook(SECRET).verify(body, headers)["type"] == "download.cancelled"
    fast = make_stack(**FAST)
    with fast.client() as client:
        missing = initiate_with_callback(client, [99999999], receiver.url)
        [(headers, body)] = receiver.for_job(missing)
        event = Webhook(SECRET).verify(body, headers)
        assert event["type"] == "download.failed" and event["data"]["error"]


@pytest.mark.slow
def test_retries_with_the_same_event_id_then_dead_letter_and_redeliver(make_stack, receiver):
    stack = make_stack(**FAST)
    with stack.client() as client:
        receiver.script = [503, 502]  # two failures, then the default 204
        flaky = initiate_with_callback(client, [70000], receiver.url)
        deliveries = receiver.for_job(flaky, count=3)
        assert [Webhook(SECRET).verify(b, h)["id"] for h, b in deliveries] == [
            deliveries[0][0]["webhook-id"]
        ] * 3
        record = wait_until_webhook(client, flaky, "delivered")["webhook"]
        assert record["attempts"] == 3 and record["lastStatus"] == 204

        receiver.default = 500  # the receiver is down for good: attempts run out
        doomed = initiate_with_callback(client, [70007], receiver.url)
        assert len(receiver.for_job(doomed, count=3)) == 3
        record = wait_until_webhook(client, doomed, "failed")["webhook"]
        assert record == {**record, "attempts": 3, "lastStatus": 500, "lastError": "HTTP 500"}

        letters = cli(stack, "webhooks", "dead")
        assert [letter["jobId"] for letter in map(json.loads, letters.splitlines())] == [doomed]
        assert "do-not-log" not in letters and "127.0.0.1" in letters

        receiver.default = 204
        cli(stack, "webhooks", "redeliver", doomed)
        again = receiver.for_job(doomed, count=4)[-1]
        assert Webhook(SECRET).verify(again[1], again[0])["id"] == record["eventId"]
        assert wait_until_webhook(client, doomed, "delivered")["webhook"]["attempts"] == 1
        assert cli(stack, "webhooks", "dead") == ""


@pytest.mark.slow
def test_a_4xx_answer_is_final(make_stack, receiver):
    stack = make_stack(**FAST)
    receiver.default = 410
    with stack.client() as client:
        job_id = initiate_with_callback(client, [70000], receiver.url)
        record = wait_until_webhook(client, job_id, "failed")["webhook"]
        assert record["attempts"] == 1 and record["lastStatus"] == 410
        assert len(receiver.for_job(job_id)) == 1


def test_callbacks_to_private_addresses_are_refused(make_stack):
    stack = make_stack(WEBHOOK_SECRET=SECRET)  # no allow-list
    with stack.client() as client:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/hook",
            "http://[::1]/hook",
            "ftp://example.com/hook",
            "http://user:pass@example.com/hook",
            "not a url",
        ):
            response = client.post("/v1/download/initiate", json={"file_ids": [70000], "callbackUrl": url})
            assert response.status_code == 400, (url, response.text)
            assert response.json()["requestId"] == response.headers["x-request-id"]
        wrong_type = client.post("/v1/download/initiate", json={"file_ids": [70000], "callbackUrl": 5})
        assert wrong_type.status_code == 400 and "callbackUrl" in wrong_type.json()["message"]


def test_without_a_secret_callbacks_are_refused(stack):
    with stack.client() as client:
        body = {"file_ids": [70000], "callbackUrl": "https://example.com/hook"}
        response = client.post("/v1/download/initiate", json=body)
        assert response.status_code == 400 and "WEBHOOK_SECRET" in response.json()["message"]


@pytest.mark.parametrize(
    ("url", "env", "allowed"),
    [
        ("http://127.0.0.1/x", {}, False),
        ("http://127.0.0.1/x", {"webhook_allowed_hosts": "127.0.0.0/8"}, True),
        ("http://localhost/x", {"webhook_allowed_hosts": "localhost"}, True),
        ("http://localhost/x", {"webhook_allowed_hosts": "10.0.0.0/8"}, False),
        ("http://[::ffff:10.0.0.1]/x", {}, False),
        ("http://100.64.0.1/x", {}, False),
        ("http://192.168.1.1/x", {"webhook_allow_private": "true"}, True),
        ("http://8.8.8.8/x", {}, True),
        ("https://8.8.8.8:8443/x", {}, True),
        ("http://8.8.8.8:99999/x", {}, False),
    ],
)
def test_guard(url: str, env: dict[str, str], allowed: bool) -> None:
    settings = load_settings(**env)
    if allowed:
        guard.check(url, settings)
    else:
        with pytest.raises(guard.UnsafeCallback):
            guard.check(url, settings)


# -- helpers -------------------------------------------------------------------------------------


def initiate_with_callback(client: Any, file_ids: list[int], url: str) -> str:
    return initiate_json(client, {"file_ids": file_ids, "callbackUrl": url})


def wait_until_webhook(client: Any, job_id: str, wanted: str, timeout_s: float = 20) -> dict[str, Any]:
    body: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal body
        body = client.get(f"/v1/download/status/{job_id}").json()
        return body if body.get("webhook", {}).get("state") == wanted else None

    return wait_until(reached, timeout_s, lambda: f"webhook of {job_id} {wanted}: {body}", retry_on=())


def cli(stack: Any, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
