"""Wire compatibility with the original service: routes, fields, validation, headers."""

from __future__ import annotations

import pytest

from service.harness import start_api
from tests.jobs import initiate


def test_root_and_health(stack):
    with stack.client() as client:
        root = client.get("/")
        assert root.status_code == 200 and root.json()["message"]
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "healthy", "checks": {"storage": "ok", "redis": "ok"}}
        assert client.get("/health/live").json() == {"status": "ok"}
        assert client.get("/health/ready").status_code == 200


def test_check_reports_availability_from_a_real_head(stack):
    with stack.client() as client:
        found = client.post("/v1/download/check", json={"file_id": 70000})
        assert found.status_code == 200
        body = found.json()
        assert body == {
            "file_id": 70000,
            "available": True,
            "s3Key": "downloads/70000.zip",
            "size": body["size"],
        }
        assert body["size"] > 100
        missing = client.post("/v1/download/check", json={"file_id": 10_001}).json()
        assert missing == {"file_id": 10_001, "available": False, "s3Key": None, "size": None}


def test_legacy_start_completes_with_a_working_presigned_url(stack, s3):
    import httpx

    with stack.client() as client:
        response = client.post("/v1/download/start", json={"file_id": 70014})
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "completed" and body["file_id"] == 70014
        assert body["processingTimeMs"] >= 100
        assert body["message"].startswith("Download ready after ")
        assert response.headers["deprecation"] == "true"
        assert 'rel="successor-version"' in response.headers["link"]
        assert (
            httpx.get(body["downloadUrl"]).content
            == s3.get_object(Bucket="delineate-test", Key="downloads/70014.zip")["Body"].read()
        )
        failed = client.post("/v1/download/start", json={"file_id": 10_001}).json()
        assert failed["status"] == "failed" and failed["downloadUrl"] is None and failed["size"] is None


@pytest.mark.slow
def test_legacy_start_is_cut_at_request_timeout_with_json_504(make_stack):
    stack = make_stack(REQUEST_TIMEOUT_MS="1000", DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000")
    with stack.client() as client:
        response = client.post("/v1/download/start", json={"file_id": 70000})
        assert response.status_code == 504
        body = response.json()
        assert body["error"] == "Gateway Timeout" and "REQUEST_TIMEOUT_MS" in body["message"]
        assert body["requestId"] == response.headers["x-request-id"]
        assert response.elapsed.total_seconds() < 2.5


BAD_BODIES = [
    ("/v1/download/initiate", b"{not json", 400),
    ("/v1/download/initiate", b'{"file_ids": []}', 400),
    ("/v1/download/initiate", b'{"file_ids": [9999]}', 400),
    ("/v1/download/initiate", b'{"file_ids": [100000001]}', 400),
    ("/v1/download/initiate", b'{"file_ids": ["70000"]}', 400),
    ("/v1/download/initiate", b'{"file_ids": [70000.5]}', 400),
    ("/v1/download/initiate", b'{"file_ids": [true]}', 400),
    ("/v1/download/initiate", b'{"file_ids": 70000}', 400),
    ("/v1/download/initiate", b"[]", 400),
    ("/v1/download/initiate", b"", 400),
    ("/v1/download/initiate", ('{"file_ids": [' + ",".join(["70000"] * 1001) + "]}").encode(), 400),
    ("/v1/download/check", b'{"file_id": null}', 400),
    ("/v1/download/check", b'{"fileId": 70000}', 400),
    ("/v1/download/start", b'{"file_id": -70000}', 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_BODIES)
def test_bad_input_gets_a_json_error_with_the_request_id(stack, path, body, status):
    with stack.client() as client:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        payload = response.json()
        assert set(payload) == {"error", "message", "requestId"}
        assert payload["error"] == "Bad Request" and payload["message"]
        assert payload["requestId"] == response.headers["x-request-id"]


def test_thousand_ids_is_the_limit_and_is_accepted(stack):
    with stack.client() as client:
        ids = list(range(10_000, 11_000))
        assert client.post("/v1/download/initiate", json={"file_ids": ids}).status_code == 202


def test_method_path_size_and_type_errors(stack):
    with stack.client() as client:
        wrong_method = client.get("/v1/download/initiate")
        assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "Method Not Allowed"
        unknown = client.get("/nope")
        assert unknown.status_code == 404 and unknown.json()["requestId"]
        huge = client.post(
            "/v1/download/initiate",
            content=b'{"file_ids": [' + b" " * 70_000 + b"70000]}",
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413 and huge.json()["error"] == "Request Entity Too Large"
        form = client.post(
            "/v1/download/check",
            content=b"file_id=70000",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 415


def test_request_id_is_echoed_when_sane_and_replaced_otherwise(stack):
    import uuid

    with stack.client() as client:
        echoed = client.get("/", headers={"X-Request-ID": "client-abc.123"})
        assert echoed.headers["x-request-id"] == "client-abc.123"
        replaced = client.get("/", headers={"X-Request-ID": "bad value\twith spaces" + "x" * 200})
        assert uuid.UUID(replaced.headers["x-request-id"]).version == 4


def test_every_response_has_the_security_headers(stack):
    with stack.client() as client:
        for response in (
            client.get("/"),
            client.get("/nope"),
            client.post("/v1/download/check", content=b"{"),
        ):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "SAMEORIGIN"
            assert "max-age=" in response.headers["strict-transport-security"]
            assert response.headers["x-request-id"]


def test_cors_follows_cors_origins(make_stack):
    stack = make_stack(CORS_ORIGINS="https://app.example.com,https://admin.example.com")
    with stack.client() as client:
        allowed = client.options(
            "/v1/download/initiate",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key",
            },
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        denied = client.get("/", headers={"Origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in denied.headers
        simple = client.get("/", headers={"Origin": "https://admin.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://admin.example.com"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


@pytest.mark.slow
def test_rate_limit_is_shared_by_all_api_processes(make_stack):
    stack = make_stack(RATE_LIMIT_MAX_REQUESTS="5", RATE_LIMIT_WINDOW_MS="60000")
    second, second_url = start_api(stack.env, stack.logdir, name="api2")
    try:
        import httpx

        with stack.client() as first, httpx.Client(base_url=second_url) as other:
            answers = [first.get("/"), other.get("/"), first.get("/"), other.get("/"), first.get("/")]
            assert [r.status_code for r in answers] == [200] * 5
            assert [int(r.headers["ratelimit-remaining"]) for r in answers] == [4, 3, 2, 1, 0]
            assert int(answers[0].headers["ratelimit-limit"]) == 5
            assert 0 < int(answers[0].headers["ratelimit-reset"]) <= 60
            limited = other.get("/")
            assert limited.status_code == 429
            assert 0 < int(limited.headers["retry-after"]) <= 60
            assert limited.json()["requestId"] == limited.headers["x-request-id"]
            # probes are never throttled
            assert first.get("/health/live").status_code == 200
    finally:
        second.stop()


@pytest.mark.slow
def test_forwarded_for_is_only_believed_from_a_trusted_proxy(make_stack):
    untrusted = make_stack(RATE_LIMIT_MAX_REQUESTS="2")
    with untrusted.client() as client:
        # a direct client cannot pick a fresh bucket per request by forging X-Forwarded-For
        codes = [
            client.get("/", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)
        ]
        assert codes == [200, 200, 429]
    trusted = make_stack(RATE_LIMIT_MAX_REQUESTS="2", TRUSTED_PROXIES="127.0.0.1/32")
    with trusted.client() as client:
        codes = [
            client.get("/", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)
        ]
        assert codes == [200, 200, 200]  # three clients behind the proxy, one request each
        real_ip = [client.get("/", headers={"X-Real-IP": "203.0.113.9"}).status_code for _ in range(3)]
        assert real_ip == [200, 200, 429]


def test_openapi_documents_every_route_and_docs_work_offline(stack):
    from service.api.app import routes

    with stack.client() as client:
        document = client.get("/openapi").json()
        assert document["openapi"].startswith("3.")
        served = {
            (method.lower(), route.path)
            for route in routes()
            if getattr(route, "methods", None)
            for method in route.methods
            if method != "HEAD"
        }
        documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
        assert served <= documented, served - documented
        page = client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "http://" not in page.text and "https://" not in page.text
        script = client.get("/static/docs.js")
        assert script.status_code == 200 and "https://" not in script.text


def test_status_carries_retry_after_while_running(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="2000", DOWNLOAD_DELAY_MAX_MS="2000")
    with stack.client() as client:
        job_id = initiate(client, [70000])
        running = client.get(f"/v1/download/status/{job_id}")
        assert running.json()["status"] in {"queued", "processing"}
        # POLL_INTERVAL_S (2) +- 1 s: pollers spread out instead of arriving in lock-step
        hints = {int(client.get(f"/v1/download/status/{job_id}").headers["retry-after"]) for _ in range(40)}
        assert hints <= {1, 2, 3} and len(hints) >= 2, hints
        assert client.get(f"/v1/download/{job_id}/file").status_code == 409


DEEP = b"[" * 60_000  # 60 KB of nesting: json's parser recursed until RecursionError, a 500


@pytest.mark.parametrize("path", ["/v1/download/initiate", "/v1/download/check", "/v1/download/start"])
def test_deeply_nested_json_is_a_400_not_a_500(stack, path):
    with stack.client() as client:
        for body in (DEEP, b'{"file_ids": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json()["requestId"] == response.headers["x-request-id"]


def test_integral_floats_are_integers_as_in_the_original_service(stack):
    with stack.client() as client:
        found = client.post("/v1/download/check", content=b'{"file_id": 70000.0}', headers=JSON)
        assert found.status_code == 200, found.text
        assert found.json()["file_id"] == 70000 and found.json()["available"] is True
        accepted = client.post("/v1/download/initiate", content=b'{"file_ids": [70000.0, 1e4]}', headers=JSON)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["totalFileIds"] == 2


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("name", ["check", "initiate", "start"])
def test_delete_on_a_fixed_route_is_405_not_an_unknown_job(stack, name):
    with stack.client() as client:
        response = client.delete(f"/v1/download/{name}")
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"
        assert response.json()["error"] == "Method Not Allowed"
        # the same name before /cancel is no resource at all: an unknown job, not a method error
        assert client.post(f"/v1/download/{name}/cancel").status_code == 404


def test_callback_url_is_documented_as_a_uri(stack):
    with stack.client() as client:
        schema = client.get("/openapi").json()["components"]["schemas"]["InitiateRequest"]
        assert schema["properties"]["callbackUrl"]["format"] == "uri"


@pytest.mark.parametrize(
    "value", ["garbage", "+", "-", "$", "1-2-3", "1-", "-1", "1" * 4_000, "18446744073709551615-0"]
)
def test_a_malformed_last_event_id_is_a_400(stack, value):
    with stack.client() as client:
        job_id = initiate(client, [70000])
        response = client.get(f"/v1/download/stream/{job_id}", headers={"Last-Event-ID": value})
        assert response.status_code == 400, response.text
        assert "Last-Event-ID" in response.json()["message"]


def test_a_last_event_id_from_the_future_starts_afresh_instead_of_silence(make_stack):
    from tests import sse

    stack = make_stack(workers=0, SSE_HEARTBEAT_S="30")  # nothing will happen to the job
    with stack.client() as client:
        job_id = initiate(client, [70000])
        with client.stream(
            "GET", f"/v1/download/stream/{job_id}", headers={"Last-Event-ID": "99999999999999-0"}, timeout=10
        ) as response:
            assert response.status_code == 200
            first = next(sse.read(response))
            assert isinstance(first, sse.Event) and first.event == "snapshot", first
            assert first.json()["jobId"] == job_id and first.json()["status"] == "queued"
