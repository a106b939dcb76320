"""Every setting the service reads, from environment variables, validated once at start-up.

The original Node service's names are kept (PORT, S3_*, REQUEST_TIMEOUT_MS, RATE_LIMIT_*,
CORS_ORIGINS, DOWNLOAD_DELAY_*) so existing deployments keep their configuration.
"""

from __future__ import annotations

import base64
import ipaddress
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FILE_ID_MIN = 10_000
FILE_ID_MAX = 100_000_000
FILE_IDS_MAX = 1_000
# A client's X-Request-ID is kept when it matches this, else replaced, by the API
# (service/api/middleware.py) and by nginx, whose configs render it into a map
# (service/proxy/render.py): both layers keep or replace the same ids. It lives here because
# the proxy tooling already imports this module and must not import the API's middleware
# (Starlette, telemetry).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}$"
# After SIGTERM, uvicorn lets open requests and event streams run this long, then closes them
# (an SSE client resumes elsewhere with Last-Event-ID). The API pods' grace period counts it.
API_SHUTDOWN_GRACE_S = 10
OUTAGE_ALLOWANCE_DEFAULT_S = 180.0


class SettingsError(RuntimeError):
    """Raised with one line per invalid environment variable, named as the operator sets it."""


class Settings(BaseSettings):
    """Environment variables, case-insensitive; see the configuration table in README.md."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # HTTP
    host: str = "0.0.0.0"
    port: int = Field(3000, ge=1, le=65535)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    max_body_bytes: int = Field(64 * 1024, ge=1_024)
    cors_origins: Annotated[list[str], NoDecode] = ["*"]
    trusted_proxies: Annotated[list[str], NoDecode] = []
    rate_limit_window_ms: int = Field(60_000, ge=1_000)
    rate_limit_max_requests: int = Field(100, ge=1)
    poll_interval_s: int = Field(2, ge=1, le=300)
    uvicorn_keepalive_s: int = Field(75, ge=1)
    http_read_timeout_s: float = Field(15, gt=0, le=300)  # a request's head, and its body, arrive within
    api_max_connections: int = Field(0, ge=0)  # per process; 0 = derived from the fd limit (cli.py)
    api_workers: int = Field(1, ge=1, le=64)
    sse_heartbeat_s: float = Field(15, gt=0)
    sse_max_stream_s: float = Field(300, gt=0)
    sse_retry_ms: int = Field(2_000, ge=100)
    sse_max_streams: int = Field(0, ge=0)  # per process; 0 = half of the connection limit
    sse_max_streams_per_client: int = Field(20, ge=1)  # per process

    # Redis: one server (REDIS_URL), or the primary that Sentinel names (REDIS_SENTINELS)
    redis_url: str | None = None
    redis_sentinels: Annotated[list[str], NoDecode] = []  # host:port of each sentinel
    redis_sentinel_master: str = Field("delineate", min_length=1)  # the name sentinels monitor
    redis_sentinel_password: SecretStr | None = None  # the sentinels' own requirepass
    redis_password: SecretStr | None = None  # the primary's and replicas' (with REDIS_SENTINELS)
    # Replicas that must confirm a new job before its 202; unset: 1 with Sentinel, else 0
    redis_min_replicas_ack: int | None = Field(None, ge=0, le=16)
    # How long a new job waits for those replicas, then 503 and the job is withdrawn; below
    # the clients' 5 s socket timeout (redis_client.py), which would cut the WAIT first
    redis_ack_timeout_ms: int = Field(500, ge=10, le=4_000)

    # S3
    s3_endpoint: str | None = None
    s3_public_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_bucket_name: str = Field("delineate", min_length=3)
    s3_force_path_style: bool = False
    s3_presign_expires_s: int = Field(900, ge=1, le=7 * 24 * 3600)
    s3_max_attempts: int = Field(4, ge=1, le=20)
    # The API's S3 calls (health, check, start): connect and read deadline, each, in seconds
    s3_request_timeout_s: float = Field(2.0, gt=0, le=30)

    # Simulated processing, as in the original service
    download_delay_enabled: bool = True
    download_delay_min_ms: int = Field(10_000, ge=0)
    download_delay_max_ms: int = Field(120_000, ge=0)

    # Jobs and workers
    worker_concurrency: int = Field(32, ge=1, le=2_048)
    worker_heartbeat_s: int = Field(10, ge=1)
    worker_maintenance_s: int = Field(30, ge=1)
    # SIGTERM: running downloads may finish for this long, then are handed back to their queue
    worker_drain_s: int = Field(180, ge=0)
    # Added to the worker process's niceness at start: on a box shared with the API, a burst of
    # job starts or endings takes CPU from the API's answers, not the other way round.
    worker_nice: int = Field(0, ge=0, le=19)
    job_timeout_s: int = Field(900, ge=1)
    job_max_retries: int = Field(3, ge=0, le=20)
    job_retry_base_s: float = Field(2.0, ge=0)
    # An attempt rides out an S3 or Redis outage for this long before it counts as failed;
    # unset: `outage_allowance_s` derives it from JOB_TIMEOUT_S
    job_outage_allowance_s: float | None = Field(None, ge=0)
    job_ttl_s: int = Field(24 * 3600, ge=60)
    small_job_max_files: int = Field(10, ge=1)
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    dedupe_window_s: int = Field(10, ge=0)
    queue_max_depth: int = Field(10_000, ge=0)
    per_client_max_active_jobs: int = Field(100, ge=0)  # 0 = no per-client limit
    reaper_interval_s: int = Field(15, ge=1)  # how often one worker looks for stuck jobs

    # Webhooks (docs/webhooks.md): Standard Webhooks signatures, retried deliveries
    webhook_secret: SecretStr | None = None  # "whsec_<base64>" or any string; unset = no callbacks
    webhook_allow_private: bool = False  # allow callbacks to loopback / private / link-local
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = []  # hosts or CIDRs allowed anyway
    webhook_allowed_ports: Annotated[list[int], NoDecode] = []  # empty = any port
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_retry_base_s: float = Field(2.0, ge=0)
    # One attempt's whole deadline: resolution, connect, request, response headers
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    webhook_dns_timeout_s: float = Field(2.0, gt=0, le=30)  # one callback host's lookup
    webhook_concurrency: int = Field(8, ge=1, le=512)  # deliveries at once per worker (not slots)
    webhook_per_host_concurrency: int = Field(2, ge=1, le=512)  # per destination host, per worker
    webhook_dead_letters_max: int = Field(10_000, ge=1)  # the newest kept; each for JOB_TTL_S

    # Observability (docs/observability.md): metrics and traces
    worker_metrics_port: int = Field(0, ge=0, le=65535)  # the worker's /metrics port; 0 = off
    worker_metrics_addr: str = "0.0.0.0"
    prometheus_multiproc_dir: str | None = None  # API only; a fresh temp dir when unset
    otel_exporter_otlp_endpoint: str | None = None  # OTLP/HTTP base URL; unset = tracing off
    otel_service_name: str | None = None  # default: delineate-api / delineate-worker
    otel_traces_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)  # share of new traces kept

    # The downloads page links each job's trace here (e.g. http://localhost:16686)
    jaeger_ui_url: str | None = None

    # Logs
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "webhook_allowed_hosts",
        "webhook_allowed_ports",
        "redis_sentinels",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # raises ValueError naming the bad entry
        return value

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _valid_ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is not a TCP port")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port")
        return value

    @field_validator(
        "webhook_secret", "redis_sentinel_password", "redis_password", "redis_min_replicas_ack", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`WEBHOOK_SECRET=` (compose's `${WEBHOOK_SECRET:-}`) means webhooks off, not an error;
        likewise an empty Redis password or REDIS_MIN_REPLICAS_ACK means unset."""
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """Standard Webhooks secrets are base64 ("whsec_" prefix optional), at least 24 bytes."""
        if value is None:
            return None
        raw = value.get_secret_value().removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except ValueError:
            raise ValueError("must be base64, optionally prefixed with whsec_") from None
        if len(key) < 24:
            raise ValueError("must decode to at least 24 random bytes (e.g. `openssl rand -base64 32`)")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _delay_range(self) -> Settings:
        if self.download_delay_min_ms > self.download_delay_max_ms:
            raise ValueError("DOWNLOAD_DELAY_MIN_MS must not exceed DOWNLOAD_DELAY_MAX_MS")
        return self

    @model_validator(mode="after")
    def _outage_within_deadline(self) -> Settings:
        """An attempt riding out an outage must still end before RQ's timeout kills it."""
        if self.outage_allowance_s >= self.job_timeout_s:
            raise ValueError("JOB_OUTAGE_ALLOWANCE_S must be less than JOB_TIMEOUT_S")
        return self

    @property
    def outage_allowance_s(self) -> float:
        """JOB_OUTAGE_ALLOWANCE_S; unset, OUTAGE_ALLOWANCE_DEFAULT_S, or half of JOB_TIMEOUT_S
        when that is not longer than the default (a deployment with a short timeout keeps
        starting)."""
        if self.job_outage_allowance_s is not None:
            return self.job_outage_allowance_s
        if self.job_timeout_s > OUTAGE_ALLOWANCE_DEFAULT_S:
            return OUTAGE_ALLOWANCE_DEFAULT_S
        return self.job_timeout_s / 2

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty: REDIS_URL names the one server."""
        return [
            (host, int(port)) for host, _, port in (item.rpartition(":") for item in self.redis_sentinels)
        ]

    @property
    def replicas_ack(self) -> int:
        """How many replicas must confirm a new job's writes before its 202 (REDIS_MIN_REPLICAS_ACK):
        by default 1 with Sentinel (a failover must not lose an accepted job), else 0."""
        if self.redis_min_replicas_ack is not None:
            return self.redis_min_replicas_ack
        return 1 if self.redis_sentinels else 0

    @cached_property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies)

    def with_overrides(self, **changes: object) -> Settings:
        """A validated copy: used by `delineate dev` to point at the embedded Redis and S3."""
        return Settings(**{**self.model_dump(), **changes})


def load_settings(**overrides: object) -> Settings:
    """Read the environment; turn pydantic's error into one readable line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            shown = "" if "SECRET" in name or "PASSWORD" in name else f" (got {error.get('input')!r})"
            lines.append(f"invalid setting {name}: {error['msg']}{shown}")
        raise SettingsError("\n".join(lines)) from None
