"""Timeout profiles: proxy/profiles.toml loaded with tomllib and validated with pydantic.

A profile is one deployment's whole timeout budget (the proxy, the app's settings and the
simulated delays), so the configs and the check never read numbers from two places.

In a checkout the repo's proxy/profiles.toml is read (the file people edit). An installed
package (a wheel, the Docker image) has no proxy/ beside it, so it reads the copy shipped as
package data, service/proxy/profiles.toml, which a test keeps byte-identical to the repo's.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.settings import API_SHUTDOWN_GRACE_S, Settings

# nginx, Cloudflare and an ALB in front of hosts; ingress-nginx and the AWS Load Balancer
# Controller's ALB in front of Kubernetes pods (deploy/kubernetes/, docs/kubernetes.md).
Target = Literal["nginx", "cloudflare", "alb", "ingress-nginx", "aws-alb"]
KUBERNETES_TARGETS: frozenset[str] = frozenset({"ingress-nginx", "aws-alb"})
ALB_TARGETS: frozenset[str] = frozenset({"alb", "aws-alb"})
NGINX_TARGETS: frozenset[str] = frozenset({"nginx", "ingress-nginx"})
CHECKOUT = Path(__file__).resolve().parents[2]
# The packaged copy: what an installed `delineate proxy` reads when there is no checkout.
PACKAGED_PROFILES: Traversable = resources.files("service.proxy") / "profiles.toml"


def _checkout_proxy_dir() -> Path | None:
    """The repo's proxy/ when this package runs from a checkout (editable install), else None."""
    proxy = CHECKOUT / "proxy"
    if (CHECKOUT / "pyproject.toml").is_file() and (proxy / "profiles.toml").is_file():
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


# What Kubernetes adds after a pod's own shutdown before its SIGKILL: time for the process to
# exit once its work is done (the worker's hand-back, uvicorn's lifespan end).
KILL_MARGIN_S = 10


class KubernetesBudget(_Strict):
    """The pods' side of the budget (deploy/kubernetes/): how they stop and how workers scale.

    The termination grace periods are derived, not set: each is the pod's own shutdown plus
    KILL_MARGIN_S, so a SIGKILL never lands in the middle of a drain.
    """

    pre_stop_s: int = Field(
        ge=1, le=120, description="the API pod's preStop pause: endpoints and the LB stop sending first"
    )
    worker_drain_s: int = Field(ge=0, description="WORKER_DRAIN_S of the worker pods")
    scale_down_cooldown_s: int = Field(ge=0, description="KEDA cooldown and scale-down stabilisation")
    min_workers: int = Field(1, ge=0)
    max_workers: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> KubernetesBudget:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self

    def pods(self) -> Pods:
        """The values the manifests carry, derived from this budget (what render writes)."""
        return Pods(
            pre_stop_s=self.pre_stop_s,
            # preStop, then uvicorn's graceful stop, then the margin
            api_grace_s=self.pre_stop_s + API_SHUTDOWN_GRACE_S + KILL_MARGIN_S,
            worker_drain_s=self.worker_drain_s,
            # the whole drain, then the hand-back
            worker_grace_s=self.worker_drain_s + KILL_MARGIN_S,
            cooldown_s=self.scale_down_cooldown_s,
            scale_down_window_s=self.scale_down_cooldown_s,
        )


@dataclass(frozen=True)
class Pods:
    """How the pods stop and scale, as the manifests say it: derived by KubernetesBudget.pods()
    for render, read back from rendered manifests by service/proxy/kubernetes.py for check."""

    pre_stop_s: int  # the API container's preStop sleep
    api_grace_s: int  # the API pod's terminationGracePeriodSeconds
    worker_drain_s: int  # WORKER_DRAIN_S in the worker container's environment
    worker_grace_s: int  # the worker pod's terminationGracePeriodSeconds
    cooldown_s: int  # the ScaledObject's cooldownPeriod (scale to its minimum)
    scale_down_window_s: int  # the HPA's scale-down stabilizationWindowSeconds


class Profile(_Strict):
    name: str
    description: str
    targets: list[Target] = Field(min_length=1)
    proxy: ProxyBudget
    app: AppBudget
    scenario: Scenario
    kubernetes: KubernetesBudget | None = None

    @model_validator(mode="after")
    def _kubernetes_targets_have_pods(self) -> Profile:
        """An Ingress target needs the pods' budget; a host target has no pods to describe."""
        on_kubernetes = {target in KUBERNETES_TARGETS for target in self.targets}
        if len(on_kubernetes) > 1:
            raise ValueError("targets mix Kubernetes Ingresses with host proxies")
        if on_kubernetes == {True} and self.kubernetes is None:
            raise ValueError(f"targets {self.targets} need a [{self.name}.kubernetes] section")
        if on_kubernetes == {False} and self.kubernetes is not None:
            raise ValueError("a [kubernetes] section needs an ingress-nginx or aws-alb target")
        return self

    @model_validator(mode="after")
    def _valid_service_settings(self) -> Profile:
        """The app part must be settings the service accepts, or the budget is fiction."""
        Settings(**{name.lower(): value for name, value in self.app_env().items()})
        if self.kubernetes:
            Settings(worker_drain_s=self.kubernetes.worker_drain_s)
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
