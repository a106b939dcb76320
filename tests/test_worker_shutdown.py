"""A worker told to stop (SIGTERM, as an orchestrator does on a deploy) takes no new job,
finishes the downloads it runs, and exits 0; the job it did not take waits for the next worker."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.jobs import initiate, wait_for


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopping_worker_takes_no_new_job_and_exits_0_after_its_downloads(make_stack, sig):
    stack = make_stack(DOWNLOAD_DELAY_MIN_MS="3000", DOWNLOAD_DELAY_MAX_MS="3000")
    old = stack.workers[0]
    with stack.client() as client:
        running = initiate(client, [70000])
        wait_for(client, running, {"processing"}, timeout_s=15)
        old.process.send_signal(sig)
        time.sleep(0.5)  # the old worker had every chance to take what comes next
        waiting = initiate(client, [70007])
        time.sleep(1.0)
        assert client.get(f"/v1/download/status/{waiting}").json()["status"] == "queued"
        try:
            code = old.process.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker is still alive 15 s after {sig.name}") from None
        assert code == 0, old.output()[-2000:]
        done = wait_for(client, running, timeout_s=1)
        assert done["status"] == "completed" and done["attempt"] == 1, "finished within its drain"
        assert client.get(f"/v1/download/status/{waiting}").json()["status"] == "queued"
        stack.add_worker()  # the new worker of the rolling deploy
        assert wait_for(client, waiting, timeout_s=30)["status"] == "completed"
