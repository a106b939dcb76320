"""The OpenAPI document is the contract: schemathesis fuzzes a real stack against it.

Every operation gets schema-valid and schema-violating requests (bodies, headers such as
Last-Event-ID and Idempotency-Key, path ids), undeclared methods, and stateful sequences that
follow the document's links (initiate -> status -> stream -> file -> cancel). Every answer must
be a documented status with a documented content type and a body of the documented shape,
never a 5xx the client caused, and invalid input must be refused. The seed is fixed so a run
is repeatable; `SCHEMATHESIS_SEED=... SCHEMATHESIS_EXAMPLES=1000 pytest tests/test_contract_fuzz.py`
searches further.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "missing_required_header",
    "use_after_free",
    "ensure_resource_availability",
)


@pytest.mark.slow
def test_the_api_keeps_its_openapi_contract_under_fuzzing(make_stack, tmp_path):
    stack = make_stack(
        DOWNLOAD_DELAY_MIN_MS="0",
        DOWNLOAD_DELAY_MAX_MS="50",
        SSE_MAX_STREAM_S="2",  # a stream on a job still queued ends soon, not at the request timeout
        SSE_HEARTBEAT_S="1",
        PER_CLIENT_MAX_ACTIVE_JOBS="0",  # the fuzzer is one client making hundreds of jobs
    )
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{stack.url}/openapi",
        "--checks",
        ",".join(CHECKS),
        "--mode",
        "all",  # positive and negative data
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        os.environ.get("SCHEMATHESIS_EXAMPLES", "100"),
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "17"),
        "--request-timeout",
        "10",
        "--max-redirects",
        "0",  # /file answers a 302 to S3: the contract is the redirect, not S3's answer
        "--workers",
        "2",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout[-30_000:] + run.stderr[-5_000:]
    assert "generated" in run.stdout and " passed" in run.stdout, run.stdout[-5_000:]
