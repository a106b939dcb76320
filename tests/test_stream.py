"""SSE: snapshot, progress, terminal event, heartbeats, resume with Last-Event-ID."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
import redis

from service import keys
from service.harness import wait_until
from service.jobs import state
from tests import sse
from tests.jobs import initiate, wait_for
from tests.metrics import scrape, value


def open_streams(url: str) -> float:
    """delineate_sse_connections as the API's /metrics reports it now."""
    return value(scrape(f"{url}/metrics"), "delineate_sse_connections")


@pytest.mark.slow
def test_stream_follows_a_job_from_snapshot_to_completed(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="1500", DOWNLOAD_DELAY_MAX_MS="1500", SSE_HEARTBEAT_S="0.2")
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007, 70014])
        response, items = sse.collect(client, job_id)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        got = sse.events(items)
        assert got[0].event == "snapshot" and got[0].retry and got[0].json()["jobId"] == job_id
        progress = [e.json()["done"] for e in got if e.event == "progress"]
        assert progress == [1, 2, 3][-len(progress) :] and progress[-1] == 3
        assert got[-1].event == "completed"
        assert got[-1].json()["downloadUrl"] == f"/v1/download/{job_id}/file"
        processing = [e.json() for e in got if e.event == "status" and e.json()["status"] == "processing"]
        assert processing and "startedAt" in processing[0] and "started_at" not in processing[0]
        assert all(e.id for e in got)
        ids = [e.id for e in got]
        assert len(set(ids)) == len(ids)
        assert any(isinstance(item, sse.Comment) for item in items), "no heartbeat seen in 1.5 s"


@pytest.mark.slow
def test_reconnect_with_last_event_id_gets_only_what_was_missed(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="1200", DOWNLOAD_DELAY_MAX_MS="1200")
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007, 70014, 70021])
        first: list[sse.Event] = []
        with client.stream("GET", f"/v1/download/stream/{job_id}") as response:
            for item in sse.read(response):
                if isinstance(item, sse.Event):
                    first.append(item)
                    if item.event == "progress":
                        break  # the client drops after the first progress event
        wait_for(client, job_id)
        response, items = sse.collect(client, job_id, last_event_id=first[-1].id)
        rest = sse.events(items)
        assert [e.event for e in rest] == ["progress"] * (4 - first[-1].json()["done"]) + ["completed"]
        seen = {e.id for e in first}
        assert not seen & {e.id for e in rest}, "an event was sent twice"
        # and after the terminal event there is nothing left: 204 stops EventSource reconnecting
        done_response, _ = sse.collect(client, job_id, last_event_id=rest[-1].id)
        assert done_response.status_code == 204


def test_connecting_after_the_end_gets_snapshot_and_terminal_at_once(stack):
    with stack.client() as client:
        job_id = initiate(client, [12_345])
        wait_for(client, job_id)
        _, items = sse.collect(client, job_id, timeout_s=5)
        got = sse.events(items)
        assert [e.event for e in got] == ["snapshot", "failed"]
        assert got[0].json()["status"] == "failed"
        assert "none of the 1 requested files exist" in got[1].json()["error"]


def test_a_finished_job_s_streams_read_without_a_transaction_of_their_own(make_stack):
    """After a job's end its record and events are final: a stream (snapshot and terminal), a
    reconnect (204) and a resume from an id never sent (a fresh start) read them through the
    shared pipeline, not with a MULTI each on a pooled connection. When many jobs end together
    every client's EventSource reconnects at once, and those MULTIs made a reconnect cost ~15x a
    bare 204 (loadtest/bench_sse.py --phases, docs/benchmarks.md)."""
    stack = make_stack(workers=0)  # the job is ended by hand; nothing else sends a MULTI
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        job_id = initiate(client, [70000])
        finished_at = state.now_iso()
        with conn.pipeline() as pipe:  # as the worker ends a job: the record and the event
            pipe.hset(keys.job(job_id), mapping={"status": state.COMPLETED, "finished_at": finished_at})
            state.queue_event(pipe, job_id, state.COMPLETED, {"finished_at": finished_at}, 600)
            pipe.execute()

        def multis() -> int:
            return conn.info("commandstats").get("cmdstat_multi", {}).get("calls", 0)

        before = multis()
        _, items = sse.collect(client, job_id, timeout_s=5)
        got = sse.events(items)
        assert [e.event for e in got] == ["snapshot", "completed"]
        assert got[0].json()["status"] == "completed" and got[1].json()["finishedAt"] == finished_at
        done, _ = sse.collect(client, job_id, last_event_id=got[-1].id, timeout_s=5)
        assert done.status_code == 204
        _, items = sse.collect(client, job_id, last_event_id="99999999999999-0", timeout_s=5)
        assert [e.event for e in sse.events(items)] == ["snapshot", "completed"]
        assert multis() == before


def test_streams_of_a_running_job_open_without_a_transaction_of_their_own(make_stack):
    """A running job's record and newest events are read in one cut (the snapshot's id must
    match its content) by one script in the shared pipeline, not by a MULTI each on a pooled
    connection: a fresh stream and a resumed one both get what they should."""
    stack = make_stack(workers=0)  # the job stays queued
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        job_id = initiate(client, [70000])

        def multis() -> int:
            return conn.info("commandstats").get("cmdstat_multi", {}).get("calls", 0)

        before = multis()
        url = f"/v1/download/stream/{job_id}"
        with client.stream("GET", url, timeout=10) as response:
            snapshot = next(e for e in sse.read(response) if isinstance(e, sse.Event))
        assert snapshot.event == "snapshot" and snapshot.json()["status"] == "queued"
        with conn.pipeline(transaction=False) as pipe:  # a change after the snapshot: a resume gets it
            state.queue_event(pipe, job_id, "progress", {"done": 0, "total": 1, "file": {}}, 60)
            pipe.execute()
        headers = {"Last-Event-ID": snapshot.id}
        with client.stream("GET", url, headers=headers, timeout=10) as response:
            resumed = next(e for e in sse.read(response) if isinstance(e, sse.Event))
        assert resumed.event == "progress" and resumed.id != snapshot.id
        assert multis() == before


def test_a_reconnect_after_the_end_it_was_sent_here_reads_nothing(make_stack):
    """The process that sent a stream its terminal event answers the EventSource's reconnect
    (Last-Event-ID: that event) 204 without reading the job or its events again; an earlier id
    still gets what it missed."""
    stack = make_stack(workers=0)  # the job is ended by hand, while its stream is open
    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    with stack.client() as client:
        job_id = initiate(client, [70000])
        got: list[sse.Event] = []
        with client.stream("GET", f"/v1/download/stream/{job_id}", timeout=10) as response:
            for item in sse.read(response):
                if isinstance(item, sse.Event):
                    got.append(item)
                    if item.event == "snapshot":
                        with conn.pipeline() as pipe:
                            pipe.hset(keys.job(job_id), mapping={"status": state.COMPLETED})
                            ended = {"finished_at": state.now_iso()}
                            state.queue_event(pipe, job_id, state.COMPLETED, ended, 60)
                            pipe.execute()
        assert [e.event for e in got] == ["snapshot", "completed"]

        def event_reads() -> int:  # of the job (HGETALL) and of its events
            stats = conn.info("commandstats")
            names = ("hgetall", "xrange", "xrevrange")
            return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)

        before = event_reads()
        done, _ = sse.collect(client, job_id, last_event_id=got[-1].id, timeout_s=5)
        assert done.status_code == 204
        assert event_reads() == before
        _, items = sse.collect(client, job_id, last_event_id=got[0].id, timeout_s=5)
        assert [e.event for e in sse.events(items)] == ["completed"]


def test_stream_of_unknown_job_is_404_json(stack):
    with stack.client() as client:
        response = client.get("/v1/download/stream/00000000-0000-4000-8000-000000000000")
        assert response.status_code == 404
        assert response.json()["requestId"] == response.headers["x-request-id"]


@pytest.mark.slow
def test_stream_ends_at_its_maximum_lifetime_and_resumes(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="2500", DOWNLOAD_DELAY_MAX_MS="2500", SSE_MAX_STREAM_S="0.8")
    with stack.client() as client:
        job_id = initiate(client, [70000, 70007])
        _, items = sse.collect(client, job_id)
        got = sse.events(items)
        assert got and got[-1].event not in {"completed", "failed"}  # ended by lifetime, not by job
        last = got[-1].id
        final: list[sse.Event] = []
        for _ in range(10):  # a client resumes as EventSource would
            response, items = sse.collect(client, job_id, last_event_id=last)
            if response.status_code == 204:
                break
            batch = sse.events(items)
            final += batch
            last = batch[-1].id if batch else last
            if batch and batch[-1].event == "completed":
                break
        assert final[-1].event == "completed"
        assert sum(1 for e in got + final if e.event == "progress") == 2


@pytest.mark.slow
def test_many_clients_share_one_subscription_and_all_get_the_end(make_stack):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="800", DOWNLOAD_DELAY_MAX_MS="800")
    results: list[str] = []
    with stack.client() as client:
        job_id = initiate(client, [70000])

        def follow() -> None:
            with stack.client() as own:
                _, items = sse.collect(own, job_id)
                results.append(sse.events(items)[-1].event)

        threads = [threading.Thread(target=follow) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == ["completed"] * 20
        import redis

        conn = redis.Redis.from_url(stack.env["REDIS_URL"])
        # one pub/sub subscriber for the events channel (the API process), not one per client
        assert conn.pubsub_numsub("delineate:events")[0][1] == 1


def test_a_client_that_leaves_is_let_go_at_once(make_stack):
    """Not at the next heartbeat (60 s here) nor at the stream's lifetime: at once."""
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="30000", DOWNLOAD_DELAY_MAX_MS="30000", SSE_HEARTBEAT_S="60")
    with stack.client() as client:
        job_id = initiate(client, [70000])
        clients = [stack.client() for _ in range(5)]
        streams = [c.stream("GET", f"/v1/download/stream/{job_id}") for c in clients]
        readers = [sse.read(stream.__enter__()) for stream in streams]  # kept: a dropped reader hangs up
        assert [next(reader).event for reader in readers] == ["snapshot"] * 5
        assert open_streams(stack.url) == 5
        for stream, own in zip(streams, clients, strict=True):
            stream.__exit__(None, None, None)
            own.close()
        wait_until(lambda: open_streams(stack.url) == 0, 3, "streams let go")


def test_head_answers_the_headers_without_holding_a_stream(stack):
    with stack.client() as client:
        job_id = initiate(client, [70000])
        response = client.head(f"/v1/download/stream/{job_id}", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content == b""
        assert open_streams(stack.url) == 0


def test_shutdown_ends_open_streams_cleanly_so_clients_resume(make_stack):
    """SIGTERM: every stream gets a proper end (not a cut connection) and the process exits,
    instead of waiting for streams that would run for minutes."""
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="30000", DOWNLOAD_DELAY_MAX_MS="30000", SSE_HEARTBEAT_S="60")
    with stack.client() as client:
        job_id = initiate(client, [70000])
    outcomes: list[object] = []

    def follow() -> None:
        with stack.client() as own:
            try:
                _, items = sse.collect(own, job_id, timeout_s=20)
                outcomes.append([e.event for e in sse.events(items)])
            except httpx.HTTPError as exc:  # a cut stream: the server did not end it
                outcomes.append(exc)

    threads = [threading.Thread(target=follow) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: open_streams(stack.url) == 3, 10, "three open streams")
    started = time.monotonic()
    stack.api.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(15)
    stack.api.process.wait(15)
    assert outcomes == [["snapshot"]] * 3, outcomes
    assert time.monotonic() - started < 10  # uvicorn did not sit out its graceful timeout
