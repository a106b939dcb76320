"""Render a profile's proxy configs from string templates: one function per file, no template engine.

Templates use `@@{name}` placeholders (a string.Template with another delimiter) because nginx
and HAProxy both use `$` and `%` themselves.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

from service.proxy.profiles import Profile
from service.settings import REQUEST_ID_PATTERN

TEMPLATES = Path(__file__).resolve().parent / "templates"


# Paths that carry a job id, and what access logs record for them: the route, never the id.
# A job id is the only key to its job (a bearer secret, docs/jobs.md), and access logs are read
# by more people, and kept longer, than jobs. First match wins; None keeps the path as it is.
JOB_ID_ROUTES: tuple[tuple[str, str | None], ...] = (
    (r"^/v1/download/status/[^/]+$", "/v1/download/status/{job_id}"),
    (r"^/v1/download/stream/[^/]+$", "/v1/download/stream/{job_id}"),
    (r"^/v1/download/[^/]+/file$", "/v1/download/{job_id}/file"),
    (r"^/v1/download/[^/]+/cancel$", "/v1/download/{job_id}/cancel"),
    (r"^/v1/download/(check|initiate|start)$", None),
    (r"^/v1/download/.", "/v1/download/{job_id}"),  # DELETE /v1/download/{id}, or a malformed path
)


def nginx_route_map() -> str:
    """`$delineate_route`: the request's path with any job id replaced (nginx map, in order)."""
    lines = ["    map $uri $delineate_route {"]
    for pattern, route in JOB_ID_ROUTES:
        lines.append(f'        "~{pattern}" {f"{chr(34)}{route}{chr(34)}" if route else "$uri"};')
    lines += ["        default $uri;", "    }"]
    return "\n".join(lines)


def haproxy_route_rules() -> str:
    """`txn.route` for HAProxy's log line, the same routes (later rules win, so reversed)."""
    lines = ["    http-request set-var(txn.route) path"]
    for pattern, route in reversed(JOB_ID_ROUTES):
        value = f"str({route})" if route else "path"
        lines.append(f"    http-request set-var(txn.route) {value} if {{ path_reg {pattern} }}")
    return "\n".join(lines)


class _Template(string.Template):
    delimiter = "@@"


def duration(seconds: float) -> str:
    """nginx/HAProxy time syntax: whole seconds as `60s`, anything finer in milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _fill(template: str, profile: Profile, **values: object) -> str:
    header = (
        f"Rendered by `delineate proxy render {profile.name}` from proxy/profiles.toml: edit the "
        f"profile and re-render, not this file.\n# Profile {profile.name}: {profile.description}."
    )
    text = (TEMPLATES / template).read_text()
    return _Template(text).substitute(header=header, **values)


def _nginx_common(profile: Profile) -> dict[str, object]:
    proxy = profile.proxy
    servers = "\n".join(f"        server {address} max_fails=0;" for address in proxy.upstreams)
    return {
        "listen": proxy.listen,
        "servers": servers,
        "request_id_pattern": REQUEST_ID_PATTERN,
        "read_timeout": duration(proxy.read_timeout_s),
        "connect_timeout": duration(proxy.connect_timeout_s),
        "client_timeout": duration(proxy.client_timeout_s),
        "client_keepalive": duration(proxy.client_keepalive_s),
        "upstream_keepalive": duration(proxy.upstream_keepalive_s),
        "upstream_connections": proxy.upstream_keepalive_connections,
        "body_limit": f"{proxy.client_max_body_kb}k",
        "route_map": nginx_route_map(),
    }


# The access log's fields: one JSON object per line, in the file and in the syslog copy.
_LOG_FIELDS = """\
        '{"time":"$time_iso8601","request_id":"$delineate_request_id",'
        '"remote_addr":"$remote_addr","x_forwarded_for":"$http_x_forwarded_for",'
        '"method":"$request_method","route":"$delineate_route","status":$status,'
        '"body_bytes_sent":$body_bytes_sent,"request_time":$request_time,'
        '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
        '"upstream_connect_time":"$upstream_connect_time",'
        '"upstream_header_time":"$upstream_header_time",'
        '"upstream_response_time":"$upstream_response_time",'
        '"user_agent":"$http_user_agent"}'"""


def _nginx_upstream(profile: Profile) -> dict[str, str]:
    """How nginx finds the API: a fixed upstream group resolved once at start, or, with a
    `resolver`, a name looked up again every `resolver_valid_s` (a recreated container's new
    address is found; the group's kept-alive connections are the price)."""
    proxy = profile.proxy
    if not proxy.resolver:
        servers = "\n".join(f"        server {address} max_fails=0;" for address in proxy.upstreams)
        upstream = (
            "    upstream delineate_api {\n"
            f"{servers}\n"
            "        # Reused connections to uvicorn; UVICORN_KEEPALIVE_S must outlast keepalive_timeout,\n"
            "        # or nginx reuses a connection uvicorn is closing (502).\n"
            f"        keepalive {proxy.upstream_keepalive_connections};\n"
            f"        keepalive_timeout {duration(proxy.upstream_keepalive_s)};\n"
            "        keepalive_requests 10000;\n"
            "    }\n\n"
        )
        return {"upstream": upstream, "upstream_variable": "\n", "proxy_pass": "http://delineate_api"}
    valid = duration(proxy.resolver_valid_s)
    upstream = (
        f"    # The API's address is looked up at {proxy.resolver} and trusted for {valid}\n"
        "    # (proxy.resolver): a name resolved once at start would keep answering 502 after the\n"
        "    # API's container is recreated with a new address. A variable in proxy_pass is what\n"
        "    # makes nginx resolve at request time; it has no kept-alive connection pool.\n"
        f"    resolver {proxy.resolver} valid={valid} ipv6=off;\n"
        "    resolver_timeout 5s;\n\n"
    )
    variable = f"\n        set $delineate_upstream {proxy.upstreams[0]};\n\n"
    return {"upstream": upstream, "upstream_variable": variable, "proxy_pass": "http://$delineate_upstream"}


def _syslog_access_log(profile: Profile) -> str:
    """With `access_log_syslog`, a copy of each access-log line over syslog (UDP) for a
    log-derived metrics exporter (observability/mtail/nginx.mtail): the statuses nginx itself
    answered, such as the 502/504 the API never saw. The trailing newline ends each line."""
    target = profile.proxy.access_log_syslog
    if not target:
        return "\n"
    return (
        "\n    # A copy of each line for the log-derived metrics (observability/mtail/nginx.mtail):\n"
        "    # what nginx itself answered, 502/504 included, which the API's own metrics never see.\n"
        "    log_format delineate_syslog escape=json\n"
        f"{_LOG_FIELDS} '\\n';\n"
        f"    access_log syslog:server={target},tag=nginx,nohostname delineate_syslog;\n\n"
    )


def nginx_conf(profile: Profile) -> str:
    """The production nginx.conf: also what the `nginx` emulation in tests runs."""
    proxy = profile.proxy
    if proxy.rate_limit_rps:
        zone = (
            "    # Per-client-IP rate limit (nginx-level; the API has its own per-client limit too).\n"
            f"    limit_req_zone $binary_remote_addr zone=delineate:10m rate={proxy.rate_limit_rps:g}r/s;\n"
            "    limit_req_status 429;\n"
        )
        apply = f"            limit_req zone=delineate burst={proxy.rate_limit_burst} nodelay;\n"
    else:
        zone = "    # Rate limit off in this profile (proxy.rate_limit_rps = 0): the API limits per client.\n"
        apply = ""
    return _fill(
        "nginx.conf",
        profile,
        rate_limit_zone=zone,
        rate_limit=apply,
        log_fields=_LOG_FIELDS,
        syslog_access_log=_syslog_access_log(profile),
        **_nginx_upstream(profile),
        **_nginx_common(profile),
    )


def cloudflare_emulation_conf(profile: Profile) -> str:
    """nginx standing in for the Cloudflare edge: 524 after the Proxy Read Timeout, 520/522 else."""
    return _fill("cloudflare-emulation.conf", profile, **_nginx_common(profile))


def cloudflare_terraform(profile: Profile) -> str:
    return _fill(
        "cloudflare.tf",
        profile,
        read_timeout=int(profile.proxy.read_timeout_s),
        stream_prefix="/v1/download/stream/",
    )


def alb_cloudformation(profile: Profile) -> str:
    proxy = profile.proxy
    interval = max(5, proxy.health_check_interval_s)  # the ALB's minimum
    return _fill(
        "alb.yaml",
        profile,
        idle_timeout=max(1, round(proxy.read_timeout_s)),
        deregistration_delay=proxy.deregistration_delay_s,
        health_interval=interval,
        health_timeout=min(5, interval - 1),
        target_port=proxy.upstreams[0].rsplit(":", 1)[-1],
        response_time_threshold=_plain_seconds(profile.app.request_timeout_ms / 1000),
    )


def _plain_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def alb_emulation_cfg(profile: Profile) -> str:
    """HAProxy with the ALB's idle timeout on every side (see docs/proxies.md for why all three)."""
    proxy = profile.proxy
    servers = "\n".join(
        f"    server target{index} {address} check pool-purge-delay {duration(proxy.upstream_keepalive_s)}"
        for index, address in enumerate(proxy.upstreams, start=1)
    )
    return _fill(
        "alb-emulation.cfg",
        profile,
        listen=proxy.listen if ":" in proxy.listen else f"127.0.0.1:{proxy.listen}",
        idle=duration(proxy.read_timeout_s),
        connect_timeout=duration(proxy.connect_timeout_s),
        health_interval=duration(proxy.health_check_interval_s),
        servers=servers,
        route_rules=haproxy_route_rules(),
    )


def app_env(profile: Profile) -> str:
    """The service's side of the budget, as an env file for the API and workers."""
    lines = [f"# Rendered by `delineate proxy render {profile.name}` from proxy/profiles.toml."]
    lines += [f"{name}={value}" for name, value in profile.app_env().items()]
    return "\n".join(lines) + "\n"


FILES: dict[str, dict[str, Callable[[Profile], str]]] = {
    "nginx": {"nginx/nginx.conf": nginx_conf, "nginx/app.env": app_env},
    "cloudflare": {
        "cloudflare/main.tf": cloudflare_terraform,
        "cloudflare/emulation/nginx.conf": cloudflare_emulation_conf,
        "cloudflare/app.env": app_env,
    },
    "alb": {
        "alb/alb.yaml": alb_cloudformation,
        "alb/emulation/haproxy.cfg": alb_emulation_cfg,
        "alb/app.env": app_env,
    },
}


def render(profile: Profile) -> dict[str, str]:
    """Every file of the profile's targets, keyed by its path under the output directory."""
    from service.proxy import kubernetes  # it renders with this module's helpers

    files: dict[str, str] = {}
    for target in profile.targets:
        if target in FILES:
            files.update({path: make(profile) for path, make in FILES[target].items()})
        else:
            files.update({path: make(profile) for path, make in kubernetes.overlay_files(target).items()})
            files.update(kubernetes.monitoring_files())
    return files


def write(profile: Profile, out: Path) -> list[Path]:
    written = []
    for relative, text in render(profile).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
