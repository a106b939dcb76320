"""Signed webhooks: real deliveries to a receiver on loopback, verified independently.

The receiver checks every delivery with the Standard Webhooks reference library and with the
snippet published in docs/webhooks.md, so the signing, the docs and the retries are proven
against the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from service import keys, runtime
from service.harness import wait_until
from service.jobs import lifecycle, state
from service.settings import load_settings
from service.webhooks import delivery, guard
from tests.hooks import SECRET, WEBHOOKS, Receiver
from tests.jobs import initiate_json, runtime_on, wait_for
from tests.support import ROOT, require_binary

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
    """400 with the request id; for a host that is not public, one generic message whether it
    is an internal name, a private literal or a name that does not resolve: never the address
    a name has (an oracle for the internal network otherwise)."""
    stack = make_stack(WEBHOOK_SECRET=SECRET)  # no allow-list
    not_public = set()
    with stack.client() as client:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/hook",
            "http://[::1]/hook",
            "http://no-such-host.invalid/hook",
            "ftp://example.com/hook",
            "http://user:pass@example.com/hook",
            "not a url",
        ):
            response = client.post("/v1/download/initiate", json={"file_ids": [70000], "callbackUrl": url})
            assert response.status_code == 400, (url, response.text)
            assert response.json()["requestId"] == response.headers["x-request-id"]
            if url.startswith("http://") and "@" not in url:
                not_public.add(response.json()["message"])
        [message] = not_public
        assert not re.search(r"\d+\.\d+\.\d+\.\d+|::1|resolve", message), message
        wrong_type = client.post("/v1/download/initiate", json={"file_ids": [70000], "callbackUrl": 5})
        assert wrong_type.status_code == 400 and "callbackUrl" in wrong_type.json()["message"]


def test_without_a_secret_callbacks_are_refused(stack):
    with stack.client() as client:
        body = {"file_ids": [70000], "callbackUrl": "https://example.com/hook"}
        response = client.post("/v1/download/initiate", json=body)
        assert response.status_code == 400 and "WEBHOOK_SECRET" in response.json()["message"]


def rebind(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A resolver that answers `name` with 127.0.0.2 once (the address the guard allows), then
    127.0.0.1 (a DNS-rebinding attacker's second answer); other names as before."""
    answers = ["127.0.0.2"]
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            address = answers.pop(0) if answers else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)


@pytest.mark.parametrize(
    ("url", "env", "allowed"),
    [
        ("http://127.0.0.1/x", {}, False),
        ("http://127.0.0.1/x", {"webhook_allowed_hosts": "127.0.0.0/8"}, True),
        ("http://localhost/x", {"webhook_allowed_hosts": "localhost"}, True),
        ("http://localhost/x", {"webhook_allowed_hosts": "10.0.0.0/8"}, False),
        # trusted by name: accepted without a lookup (.invalid never resolves)
        ("http://hooks.internal.invalid/x", {"webhook_allowed_hosts": "hooks.internal.invalid"}, True),
        ("http://hooks.internal.invalid/x", {}, False),
        ("http://[::ffff:10.0.0.1]/x", {}, False),
        ("http://100.64.0.1/x", {}, False),
        ("http://192.168.1.1/x", {"webhook_allow_private": "true"}, True),
        ("http://8.8.8.8/x", {}, True),
        ("https://8.8.8.8:8443/x", {}, True),
        ("http://8.8.8.8:99999/x", {}, False),
        # addresses that stand for another one: NAT64, 6to4, IPv4-compatible, Teredo
        ("http://[64:ff9b::7f00:1]/x", {}, False),
        ("http://[64:ff9b::a9fe:a9fe]/x", {}, False),
        ("http://[64:ff9b:1::a00:1]/x", {}, False),
        ("http://[2002:7f00:1::1]/x", {}, False),
        ("http://[::7f00:1]/x", {}, False),
        ("http://[::a9fe:a9fe]/x", {}, False),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x", {}, False),
        ("http://[2606:4700:4700::1111]/x", {}, True),
        # the optional port allow-list
        ("https://8.8.8.8/x", {"webhook_allowed_ports": "443"}, True),
        ("http://8.8.8.8:6379/x", {"webhook_allowed_ports": "80,443"}, False),
    ],
)
def test_guard(url: str, env: dict[str, str], allowed: bool) -> None:
    settings = load_settings(**env)
    if allowed:
        asyncio.run(guard.check(url, settings))
    else:
        with pytest.raises(guard.UnsafeCallback):
            asyncio.run(guard.check(url, settings))


def test_a_rebinding_resolver_cannot_aim_a_delivery_at_loopback(redis_factory, monkeypatch):
    """The resolver answers an allowed address to the first lookup and loopback to every later
    one (DNS rebinding). The delivery must go to the address that was judged, with the Host
    header naming the host, and the loopback listener on the same port must get nothing."""
    judged = Receiver("127.0.0.2")
    victim = Receiver("127.0.0.1", judged.port)
    rebind(monkeypatch, "hooks.rebind.test")
    conn = redis.Redis.from_url(redis_factory().url)
    rt = runtime_on(conn, webhook_secret=SECRET, webhook_allowed_hosts=["127.0.0.2/32"])
    runtime.install(rt)
    try:
        url = f"http://hooks.rebind.test:{judged.port}/hook"
        job_id, event_id = terminal_job_with_callback(rt, url)
        delivery.deliver(job_id, event_id)
        [(headers, body)] = judged.deliveries(job_id)
        assert {k.lower(): v for k, v in headers.items()}["host"] == f"hooks.rebind.test:{judged.port}"
        assert Webhook(SECRET).verify(body, headers)["id"] == event_id
        assert victim.requests == []
        assert state.load(conn, job_id).webhook["state"] == "delivered"
    finally:
        runtime.install(None)  # type: ignore[arg-type]
        judged.server.shutdown()
        victim.server.shutdown()
        conn.close()


def test_https_deliveries_dial_the_judged_address_and_name_the_host_in_sni(
    redis_factory, monkeypatch, tmp_path
):
    """An https callback connects to the judged address but its TLS handshake names the host
    (SNI), so the receiver's certificate is checked against the name, not the address."""
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=hooks.tls.test", "-addext", "subjectAltName=DNS:hooks.tls.test"]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject,
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    listener = socket.create_server(("127.0.0.2", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
            pass  # the client gives up on our self-signed certificate after the SNI was sent

    threading.Thread(target=serve_one, daemon=True).start()
    rebind(monkeypatch, "hooks.tls.test")
    conn = redis.Redis.from_url(redis_factory().url)
    rt = runtime_on(conn, webhook_secret=SECRET, webhook_allowed_hosts=["127.0.0.2/32"])
    runtime.install(rt)
    try:
        job_id, event_id = terminal_job_with_callback(rt, f"https://hooks.tls.test:{port}/hook")
        record = delivery.deliver(job_id, event_id)
        assert names == ["hooks.tls.test"]
        assert record is not None and record["lastError"] == "no response"  # untrusted: not sent
    finally:
        runtime.install(None)  # type: ignore[arg-type]
        listener.close()
        conn.close()


def test_the_dead_letter_set_is_capped_and_expires(redis_factory, receiver):
    """A client whose callback always answers 4xx must not grow the dead-letter set forever: it
    keeps the newest WEBHOOK_DEAD_LETTERS_MAX, none older than JOB_TTL_S, and expires itself."""
    receiver.default = 410  # final: one attempt, then a dead letter
    conn = redis.Redis.from_url(redis_factory().url)
    rt = runtime_on(
        conn,
        webhook_secret=SECRET,
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_dead_letters_max=3,
        job_ttl_s=3600,
    )
    runtime.install(rt)
    try:
        doomed = []
        for _ in range(5):
            job_id, event_id = terminal_job_with_callback(rt, receiver.url)
            delivery.deliver(job_id, event_id)
            doomed.append(job_id)
        assert [m.decode() for m in conn.zrange(keys.DEAD_LETTERS, 0, -1)] == doomed[-3:]
        assert 0 < conn.ttl(keys.DEAD_LETTERS) <= 3600
        conn.zadd(keys.DEAD_LETTERS, {"older-than-its-job": time.time() - 7200})
        job_id, event_id = terminal_job_with_callback(rt, receiver.url)
        delivery.deliver(job_id, event_id)
        assert b"older-than-its-job" not in conn.zrange(keys.DEAD_LETTERS, 0, -1)
    finally:
        runtime.install(None)  # type: ignore[arg-type]
        conn.close()


# -- helpers -------------------------------------------------------------------------------------


def terminal_job_with_callback(rt: Any, url: str) -> tuple[str, str]:
    """A completed job with a callback and a pending delivery record, as `finish` leaves it."""
    job = state.JobRecord(
        id=str(uuid.uuid4()),
        status=state.COMPLETED,
        file_ids=[70000],
        created_at=state.now_iso(),
        queue=keys.SMALL_QUEUE,
        callback_url=url,
    )
    event_id = f"msg_{uuid.uuid4().hex}"
    record = {"state": "pending", "eventId": event_id, "attempts": 0, "lastStatus": None, "lastError": None}
    with rt.redis.pipeline() as pipe:
        state.queue_create(pipe, job, 3600, track_client=False)
        lifecycle.stage_webhook(pipe, job.id, record)
        pipe.execute()
    return job.id, event_id


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
