"""The async flow against real Redis, real S3 (SeaweedFS) and real API and worker processes."""

from __future__ import annotations

import io
import threading
import uuid
import zipfile

import httpx
import redis

from service import keys
from tests.jobs import initiate, wait_for
from tests.support import LARGE_FILE_BYTES, LARGE_FILE_ID, TEST_BUCKET


def fetch_file(client: httpx.Client, job_id: str) -> bytes:
    redirect = client.get(f"/v1/download/{job_id}/file")
    assert redirect.status_code == 302, redirect.text
    location = redirect.headers["location"]
    assert "X-Amz-Signature=" in location
    download = httpx.get(location, timeout=30)
    assert download.status_code == 200
    return download.content


def test_initiate_answers_202_with_location_and_queues_the_job(stack):
    with stack.client() as client:
        response = client.post("/v1/download/initiate", json={"file_ids": [70000]})
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "queued" and body["totalFileIds"] == 1
        assert response.headers["location"] == f"/v1/download/status/{body['jobId']}" == body["statusUrl"]
        assert int(response.headers["retry-after"]) >= 1
        uuid.UUID(body["jobId"])  # an unguessable UUID


def test_single_file_job_completes_and_redirects_to_the_real_object(stack, s3):
    with stack.client() as client:
        job_id = initiate(client, [70007])
        done = wait_for(client, job_id)
        assert done["status"] == "completed", done
        assert done["progress"] == {"done": 1, "total": 1, "percent": 100.0}
        assert done["files"] == [{"file_id": 70007, "available": True, "size": done["size"]}]
        assert done["startedAt"] and done["finishedAt"] and done["error"] is None
        assert done["downloadUrl"] == f"/v1/download/{job_id}/file"
        expected = s3.get_object(Bucket=TEST_BUCKET, Key="downloads/70007.zip")["Body"].read()
        assert fetch_file(client, job_id) == expected
        # a new signature on every call
        first = client.get(f"/v1/download/{job_id}/file").headers["location"]
        second_response = client.get(f"/v1/download/{job_id}/file")
        assert second_response.headers["location"] != first or "X-Amz-Date" in first


def test_multi_file_job_streams_a_zip_with_the_right_members(stack, s3):
    with stack.client() as client:
        job_id = initiate(client, [70000, 12_345, LARGE_FILE_ID, 70014])
        done = wait_for(client, job_id, timeout_s=60)
        assert done["status"] == "completed", done
        assert [f["available"] for f in done["files"]] == [True, False, True, True]
        archive = zipfile.ZipFile(io.BytesIO(fetch_file(client, job_id)))
        assert archive.namelist() == ["70000.zip", f"{LARGE_FILE_ID}.zip", "70014.zip"]
        assert archive.testzip() is None
        large = archive.read(f"{LARGE_FILE_ID}.zip")
        assert len(large) == LARGE_FILE_BYTES
        assert large == s3.get_object(Bucket=TEST_BUCKET, Key=f"downloads/{LARGE_FILE_ID}.zip")["Body"].read()
        # the bundle is bigger than one 8 MiB part: it went up by multipart upload
        head = s3.head_object(Bucket=TEST_BUCKET, Key=f"results/{job_id}.zip")
        assert head["ContentLength"] == done["size"] > 8 * 1024 * 1024


def test_job_whose_files_are_all_missing_fails_with_a_reason(stack):
    with stack.client() as client:
        job_id = initiate(client, [12_345, 23_456])
        done = wait_for(client, job_id)
        assert done["status"] == "failed"
        assert "none of the 2 requested files exist" in done["error"]
        assert done["downloadUrl"] is None
        conflict = client.get(f"/v1/download/{job_id}/file")
        assert conflict.status_code == 409
        assert conflict.json()["requestId"] == conflict.headers["x-request-id"]


def test_unknown_and_expired_jobs(stack):
    with stack.client() as client:
        assert client.get(f"/v1/download/status/{uuid.uuid4()}").status_code == 404
        assert client.get("/v1/download/status/not-a-uuid").status_code == 404
        job_id = initiate(client, [70000])
        wait_for(client, job_id)
        # what Redis expiry does after JOB_TTL_S: the job's keys vanish, the index remembers
        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        conn.delete(keys.job(job_id))
        gone = client.get(f"/v1/download/status/{job_id}")
        assert gone.status_code == 410
        assert gone.json()["error"] == "Gone"
        assert client.get(f"/v1/download/{job_id}/file").status_code == 410


def _monitor(url: str, into: list[list[str]], ready: threading.Event, stop: threading.Event) -> None:
    with redis.Redis.from_url(url, decode_responses=True).monitor() as monitor:
        ready.set()
        while not stop.is_set():
            into.append(monitor.next_command()["command"].split())


def test_last_progress_and_the_end_are_one_transaction_when_nothing_comes_between(stack):
    """One file, no bundle to write: the last `progress` and `completed` go out in one MULTI, so
    an SSE subscriber gets them in one write (and the hub reads them once). With several files
    the zip is written between the two, so they stay apart."""
    commands: list[list[str]] = []
    ready, stop = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_monitor, args=(stack.env["REDIS_URL"], commands, ready, stop))
    watcher.start()
    ready.wait(5)
    try:
        with stack.client() as client:
            single = initiate(client, [70007])
            several = initiate(client, [70000, 70014])
            assert wait_for(client, single)["status"] == "completed"
            assert wait_for(client, several, timeout_s=60)["status"] == "completed"
    finally:
        stop.set()
        redis.Redis.from_url(stack.env["REDIS_URL"]).ping()  # wakes the monitor to see `stop`
        watcher.join(5)

    def transactions_with_events(job_id: str) -> list[list[str]]:
        """The events each MULTI/EXEC wrote to the job's stream, in order."""
        found, current = [], None
        for command in commands:
            name = command[0].upper()
            if name == "MULTI":
                current = []
            elif name == "EXEC" and current is not None:
                if current:
                    found.append(current)
                current = None
            elif name == "XADD" and current is not None and command[1] == keys.events(job_id):
                current.append(command[command.index("event") + 1])
        return found

    assert transactions_with_events(single)[-1] == ["progress", "completed"]
    assert transactions_with_events(several)[-2:] == [["progress"], ["completed"]]
