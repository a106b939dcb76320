"""Real proxies in front of the real stack: nginx (itself, or emulating Cloudflare) and HAProxy
(emulating an ALB), rendered from a profile in proxy/profiles.toml by service.proxy.render.

`proxy_factory(...)(kind, **env)` starts a private API + worker with the profile's app settings (plus
overrides) and the chosen proxy in front of it; `follow_stream` reads an SSE stream and
reports a cut instead of raising, because a cut stream is an outcome the tests assert on.
`running_mtail` reads nginx's access log over syslog as the compose stack's nginx-metrics does.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service import harness
from service.harness import Proc, Stack, spawn
from service.proxy import render
from service.proxy.profiles import Profile, load_profile
from tests import sse
from tests.support import ROOT, require_binary

KINDS = ("nginx", "cloudflare", "alb")
TIMEOUT_STATUS = {"nginx": 504, "cloudflare": 524, "alb": 504}


def nginx_files(profile: Profile) -> dict[str, str]:
    """The nginx configs a profile renders: the production one and the Cloudflare emulation."""
    files = render.render(profile)
    return {path: text for path, text in files.items() if path.endswith("nginx.conf")}


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` with every path under `prefix` (logs/ and temp/ as the config expects)."""
    binary = require_binary("nginx")
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    args = [binary, "-t", "-e", str(prefix / "logs/stderr.log"), "-p", str(prefix), "-c", str(conf)]
    return subprocess.run(args, capture_output=True, text=True, check=False)


@dataclass
class Proxy:
    kind: str
    url: str
    proc: Proc
    prefix: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def error_log(self) -> str:
        log = self.prefix / "logs/error.log"
        return (log.read_text(errors="replace") if log.exists() else "") + self.proc.output()


def start_proxy(kind: str, profile: Profile, upstream: str, home: Path) -> Proxy:
    """Render `kind`'s emulation for `profile` pointed at `upstream` and run it in the foreground."""
    port = harness.free_port()
    profile = profile.with_proxy(listen=f"127.0.0.1:{port}", upstreams=[upstream])
    prefix = home / f"{kind}-{port}"
    for sub in ("conf", "logs", "temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    if kind == "alb":
        conf = prefix / "conf/haproxy.cfg"
        conf.write_text(render.alb_emulation_cfg(profile))
        args = [require_binary("haproxy"), "-db", "-f", str(conf)]
    else:
        conf = prefix / "conf/nginx.conf"
        text = render.nginx_conf(profile) if kind == "nginx" else render.cloudflare_emulation_conf(profile)
        conf.write_text(text)
        args = [
            require_binary("nginx"),
            "-e",
            str(prefix / "logs/stderr.log"),
            "-p",
            str(prefix),
            "-c",
            str(conf),
        ]
    proc = spawn(f"{kind}-proxy", args, {"PATH": "/usr/sbin:/usr/bin:/bin"}, prefix / "logs")
    url = f"http://127.0.0.1:{port}"
    try:
        harness.wait_until(
            lambda: httpx.get(f"{url}/health/live", timeout=1).status_code == 200, 15, kind, proc.process
        )
    except Exception:
        proc.kill()
        print(proc.output())
        raise
    return Proxy(kind, url, proc, prefix)


@contextlib.contextmanager
def proxy_factory(
    make_stack: Callable[..., Stack], home: Path
) -> Iterator[Callable[..., tuple[Stack, Proxy]]]:
    """Factory: (stack, proxy) for a proxy kind, a profile (default `test`), and app env overrides.

    Used by a `proxied` fixture in the test modules, so each test stops its own proxies (every
    one of them, each asserting a clean exit).
    """
    with contextlib.ExitStack() as stops:

        def make(
            kind: str, profile_name: str = "test", workers: int = 1, **overrides: str
        ) -> tuple[Stack, Proxy]:
            profile = load_profile(profile_name)
            stack = make_stack(workers=workers, **{**profile.app_env(), **overrides})
            proxy = start_proxy(kind, profile, stack.url.removeprefix("http://"), home)
            stops.callback(proxy.proc.stop, 5)
            return stack, proxy

        yield make


@dataclass
class StreamResult:
    """What a client saw of one SSE stream through a proxy."""

    status: int
    headers: httpx.Headers
    items: list[sse.Event | sse.Comment] = field(default_factory=list)
    error: str | None = None  # the transport error that ended the stream, if any
    seconds: float = 0.0

    @property
    def events(self) -> list[sse.Event]:
        return sse.events(self.items)

    @property
    def heartbeats(self) -> int:
        return sum(1 for item in self.items if isinstance(item, sse.Comment))

    @property
    def terminal(self) -> str | None:
        last = self.events[-1].event if self.events else None
        return last if last in {"completed", "failed", "cancelled"} else None


def follow_stream(client: httpx.Client, job_id: str, timeout_s: float = 20) -> StreamResult:
    """Read one stream to its end, however it ends (terminal event, clean close, or a cut)."""
    started = time.monotonic()
    with client.stream("GET", f"/v1/download/stream/{job_id}", timeout=timeout_s) as response:
        result = StreamResult(response.status_code, response.headers)
        if response.status_code == 200:
            with contextlib.suppress(httpx.TransportError):
                try:
                    for item in sse.read(response):
                        result.items.append(item)
                except httpx.TransportError as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
                    raise
        else:
            response.read()
    result.seconds = time.monotonic() - started
    return result


def wait_for_workers(stack: Stack, count: int, timeout_s: float = 30) -> None:
    """Until exactly `count` RQ workers are registered: a job timed through a proxy must not
    spend its time waiting for a worker to boot."""
    import redis
    from rq import Worker

    conn = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        harness.wait_until(lambda: Worker.count(connection=conn) == count, timeout_s, "rq workers")
    finally:
        conn.close()


def mtail_counts(url: str) -> dict[str, float]:
    """status -> delineate_nginx_responses_total from mtail's /metrics."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text)
    return {
        sample.labels["status"]: sample.value
        for family in families
        if family.name == "delineate_nginx_responses"
        for sample in family.samples
        if sample.name == "delineate_nginx_responses_total"
    }


@contextlib.contextmanager
def running_mtail(home: Path) -> Iterator[tuple[str, str]]:
    """mtail with the shipped program, reading syslog lines on UDP: (syslog address, metrics URL)."""
    syslog, metrics = harness.free_port(), harness.free_port()
    args = [
        require_binary("mtail"),
        "--progs",
        str(ROOT / "observability/mtail"),
        "--logs",
        f"udp://127.0.0.1:{syslog}",
        "--address",
        "127.0.0.1",
        "--port",
        str(metrics),
        "--logtostderr",
    ]
    proc = harness.spawn("mtail", args, {}, home / "logs")
    url = f"http://127.0.0.1:{metrics}"
    try:
        harness.wait_until(
            lambda: httpx.get(f"{url}/metrics", timeout=1).is_success, 15, "mtail", proc.process
        )
        yield f"127.0.0.1:{syslog}", url
    finally:
        proc.stop(5)
