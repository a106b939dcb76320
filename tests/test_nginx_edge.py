"""nginx as the compose stack runs it (deploy/profiles.toml's `resolver` and `access_log_syslog`),
on the real binary: it finds a recreated API at its new address, and the log-derived metrics
(mtail with observability/mtail/nginx.mtail) count what nginx itself answered.

The backends are plain HTTP servers: what is under test is nginx's name resolution and its log,
not the API. A test DNS server (tests/dns.py) stands in for Docker's 127.0.0.11.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from service import harness
from service.proxy import render
from service.proxy.profiles import Profile, load_profile
from tests.dns import running_dns
from tests.proxies import Proxy, mtail_counts, running_mtail, start_proxy

SLOW_S = 1.5  # the backend's answer to /slow, past the read timeout below


@contextmanager
def backend(host: str, port: int, name: str) -> Iterator[ThreadingHTTPServer]:
    """An HTTP server on host:port answering every GET with its name (/slow after SLOW_S)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/slow":
                time.sleep(SLOW_S)
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def nginx(profile: Profile, upstream: str, home: Path) -> Iterator[Proxy]:
    """The rendered nginx.conf for `profile` in front of `upstream`, stopped (cleanly) after."""
    proxy = start_proxy("nginx", profile, upstream, home)
    try:
        yield proxy
    finally:
        proxy.proc.stop(5)


def test_the_compose_nginx_looks_the_api_up_again(tmp_path: Path):
    """The API container recreated at another address: nginx follows the new DNS answer instead
    of answering 502 until restarted. (`localhost` is the one name /etc/hosts resolves too, so a
    config that resolves the name once at start runs here, and is seen to fail.)"""
    port = harness.free_port()
    with running_dns() as dns, ExitStack() as first:
        dns.answers["localhost"] = "127.0.0.1"
        first.enter_context(backend("127.0.0.1", port, "first"))
        profile = load_profile("test").with_proxy(resolver=dns.address, resolver_valid_s=1)
        with nginx(profile, f"localhost:{port}", tmp_path) as proxy, proxy.client() as client:
            assert client.get("/").text == "first"
            first.close()  # the old container is gone: its address refuses connections
            with backend("127.0.0.3", port, "second"):  # the new one, at another address
                dns.answers["localhost"] = "127.0.0.3"
                harness.wait_until(
                    lambda: client.get("/").text == "second",
                    15,
                    lambda: f"nginx to re-resolve: {proxy.error_log()}",
                )
        assert "localhost" in dns.queries, "nginx never asked the resolver"


def test_log_derived_metrics_count_what_nginx_itself_answered(tmp_path: Path):
    """A 200 passed through, a 504 after nginx's read timeout and a 502 from a refused connection:
    the API's metrics see none of the last two; the counters from nginx's log see all three."""
    with running_mtail(tmp_path) as (syslog, metrics), ExitStack() as api:
        # port 0: the kernel's pick at bind (a port chosen first could be taken before the bind)
        port = api.enter_context(backend("127.0.0.1", 0, "api")).server_address[1]
        profile = load_profile("test").with_proxy(access_log_syslog=syslog, read_timeout_s=SLOW_S / 2)
        assert f"access_log syslog:server={syslog}," in render.nginx_conf(profile)
        with nginx(profile, f"127.0.0.1:{port}", tmp_path) as proxy, proxy.client() as client:
            before = harness.wait_until(
                lambda: mtail_counts(metrics).get("200"), 15, "the health checks' 200s"
            )
            assert client.get("/").status_code == 200
            assert client.get("/slow").status_code == 504
            api.close()
            assert client.get("/").status_code == 502

        def counted() -> bool:
            counts = mtail_counts(metrics)
            return counts.get("502") == 1 and counts.get("504") == 1 and counts.get("200", 0) >= before + 1

        harness.wait_until(
            counted, 15, lambda: f"502, 504 and 200 counted once more: {mtail_counts(metrics)}"
        )
