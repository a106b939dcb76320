"""Timeout profiles: proxy/profiles.toml loaded with tomllib and validated with pydantic.

A profile is one deployment's whole timeout budget (the proxy, the app's settings and the
simulated delays), so the configs and the check never read numbers from two places.

In a checkout the repo's proxy/profiles.toml is read (the file people edit). An installed
package (a wheel, the Docker image) has no proxy/ beside it, so it reads the copy shipped as
package data, service/proxy/profiles.toml, which a test keeps byte-identical to the repo's.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.settings import Settings

Target = Literal["nginx", "cloudflare", "alb"]
_CHECKOUT = Path(__file__).resolve().parents[2]
# The packaged copy: what an installed `delineate proxy` reads when there is no checkout.
PACKAGED_PROFILES: Traversable = resources.files("service.proxy") / "profiles.toml"


def _checkout_proxy_dir() -> Path | None:
    """The repo's proxy/ when this package runs from a checkout (editable install), else None."""
    proxy = _CHECKOUT / "proxy"
    if (_CHECKOUT / "pyproject.toml").is_file() and (proxy / "profiles.toml").is_file():
        return proxy
    return None


# proxy/ of the checkout: render's default output and the checked-in configs; None when installed.
PROXY_DIR: Path | None = _checkout_proxy_dir()
PROFILES_FILE: Path | Traversable = PROXY_DIR / "profiles.toml" if PROXY_DIR else PACKAGED_PROFILES


class ProfileError(RuntimeError):
    """The profiles file is missing, malformed, or names no such profile."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProxyBudget(_Strict):
    """The layer in front of the app: nginx, the Cloudflare edge, or an ALB."""

    read_timeout_s: float = Field(gt=0, description="longest silence from the app before the cut")
    connect_timeout_s: float = Field(gt=0)
    client_timeout_s: float = Field(gt=0, description="longest silence towards the client")
    client_keepalive_s: float = Field(gt=0)
    upstream_keepalive_s: float = Field(gt=0, description="idle app connections are reused this long")
    upstream_keepalive_connections: int = Field(32, ge=1)
    client_max_body_kb: int = Field(ge=1)
    rate_limit_rps: float = Field(0, ge=0)
    rate_limit_burst: int = Field(0, ge=0)
    deregistration_delay_s: int = Field(300, ge=0, le=3600)
    health_check_interval_s: int = Field(10, ge=1, le=300)
    listen: str = "8080"
    upstreams: list[str] = Field(default_factory=lambda: ["127.0.0.1:3000"], min_length=1)
    # nginx only. A DNS server to look the upstream name up again at request time (Docker's
    # 127.0.0.11): without it the name is resolved once at start, and a recreated API
    # container's new address answers 502 until nginx restarts.
    resolver: str = ""
    resolver_valid_s: int = Field(10, ge=1, le=3600, description="how long an answer is trusted")
    # nginx only. host:port to send a syslog (UDP) copy of the access log to, for log-derived
    # metrics of what the proxy itself answered (observability/mtail/nginx.mtail).
    access_log_syslog: str = ""

    @model_validator(mode="after")
    def _one_resolved_upstream(self) -> ProxyBudget:
        if self.resolver and len(self.upstreams) != 1:
            raise ValueError("with a resolver, upstreams must be one name (its addresses are all used)")
        return self


class AppBudget(_Strict):
    """The service's own timeout settings (environment variables of the same name, upper-cased)."""

    request_timeout_ms: int
    poll_interval_s: int
    uvicorn_keepalive_s: int
    sse_heartbeat_s: float
    sse_max_stream_s: float
    sse_retry_ms: int
    max_body_bytes: int
    rate_limit_window_ms: int = 60_000
    rate_limit_max_requests: int = 100
    trusted_proxies: str = ""  # whose X-Forwarded-For the API believes: the proxy's addresses


class Scenario(_Strict):
    """The simulated processing time the deployment must survive."""

    download_delay_min_ms: int = Field(ge=0)
    download_delay_max_ms: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Scenario:
        if self.download_delay_min_ms > self.download_delay_max_ms:
            raise ValueError("download_delay_min_ms must not exceed download_delay_max_ms")
        return self


class Profile(_Strict):
    name: str
    description: str
    targets: list[Target] = Field(min_length=1)
    proxy: ProxyBudget
    app: AppBudget
    scenario: Scenario

    @model_validator(mode="after")
    def _valid_service_settings(self) -> Profile:
        """The app part must be settings the service accepts, or the budget is fiction."""
        Settings(**{name.lower(): value for name, value in self.app_env().items()})
        return self

    def app_env(self) -> dict[str, str]:
        """The service's environment for this profile (what `make_stack(**env)` takes)."""
        values = {**self.app.model_dump(), **self.scenario.model_dump()}
        return {name.upper(): _plain(value) for name, value in values.items() if value != ""}

    def with_proxy(self, **changes: object) -> Profile:
        """A copy with other proxy values (tests point the upstream at their own API port)."""
        return self.model_copy(update={"proxy": self.proxy.model_copy(update=changes)})

    def with_app(self, **changes: object) -> Profile:
        return self.model_copy(update={"app": self.app.model_copy(update=changes)})


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_profiles(path: Path | Traversable = PROFILES_FILE) -> dict[str, Profile]:
    """Every profile in the file, validated; errors name the profile and the field."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    profiles: dict[str, Profile] = {}
    for name, body in raw.items():
        try:
            profiles[name] = Profile(name=name, **body)
        except (ValidationError, TypeError) as exc:
            raise ProfileError(f"profile {name!r} in {path} is invalid:\n{exc}") from None
    return profiles


def load_profile(name: str, path: Path | Traversable = PROFILES_FILE) -> Profile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"no profile {name!r} in {path}; known: {', '.join(sorted(profiles))}")
    return profiles[name]
