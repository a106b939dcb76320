"""SSRF guard: a callback URL may only reach the public internet unless the operator says so.

A client-supplied URL that the service later POSTs to is a classic server-side request forgery
hole: `http://169.254.169.254/` (cloud metadata), `http://localhost:6379/`, an internal admin
page. `resolve` resolves the host ONCE, judges every address, and returns a `Target` pinned to
a judged address; the delivery connects to that address and nothing else (the Host header and
TLS SNI still name the host), so a resolver that answers "public" to the check and "loopback"
to the connection (DNS rebinding) gets nowhere. Every address must be globally routable and
outside the ranges that embed another address (NAT64, 6to4, IPv4-compatible IPv6), unless
WEBHOOK_ALLOW_PRIVATE is set or the host (name, address or network) is in
WEBHOOK_ALLOWED_HOSTS; WEBHOOK_ALLOWED_PORTS, when set, limits the ports.

Resolution runs on this module's own small thread pool with WEBHOOK_DNS_TIMEOUT_S, never on
the API's shared pool: a slow-resolving host can fill this pool, not delay `/health`.
Refusals say what is wrong with the URL in generic words, never which address a name has.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from service.settings import Settings

MAX_URL_LENGTH = 2_048
RESOLVER_THREADS = 16  # lookups in flight per process; more wait (within their timeout)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges whose addresses stand for another address (a gateway or tunnel forwards to the
# embedded IPv4 one): judging the outer address says nothing about where the POST lands.
EMBEDDING = tuple(
    ipaddress.ip_network(net)
    for net in (
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64 local-use (RFC 8215)
        "2002::/16",  # 6to4 (RFC 3056)
        "::/96",  # IPv4-compatible IPv6 (deprecated, RFC 4291)
        "2001::/32",  # Teredo
    )
)
NOT_PUBLIC = "callbackUrl must name a host whose addresses are all public"

_pool = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="resolve")


class UnsafeCallback(ValueError):
    """The callback URL is malformed, unresolvable or points somewhere it must not."""


class Unresolvable(UnsafeCallback):
    """The host's lookup failed or timed out (refused at initiate; retried by a delivery)."""


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL as given, and the one judged address to connect to."""

    url: str
    scheme: str
    host: str  # the name as given (Host header, TLS SNI, certificate check)
    port: int
    address: Address

    @property
    def pinned_url(self) -> str:
        """The URL with the judged address in place of the host name (the connection's aim)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return parts._replace(netloc=f"{literal}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


async def check(url: str, settings: Settings) -> None:
    """Raise UnsafeCallback with a message for the client unless `url` may be called. A host the
    operator trusts by name is not looked up here (initiate would wait on DNS for nothing); its
    deliveries resolve it."""
    _, host, _ = _parse(url, settings)
    if not _trusted(host, settings):
        await resolve(url, settings)


async def resolve(url: str, settings: Settings) -> Target:
    """Parse, resolve once (bounded by WEBHOOK_DNS_TIMEOUT_S), judge, and pin `url`."""
    parts, host, port = _parse(url, settings)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [_unmapped(literal)] if literal else await _lookup(host, port, settings.webhook_dns_timeout_s)
    if not _trusted(host, settings):
        networks = _allowed_networks(settings)
        for address in addresses:
            if not any(address in network for network in networks) and not is_public(address):
                raise UnsafeCallback(NOT_PUBLIC)
    return Target(url, parts.scheme, host, port, addresses[0])


def _trusted(host: str, settings: Settings) -> bool:
    return settings.webhook_allow_private or host in _allowed_names(settings)


def is_public(address: Address) -> bool:
    """Globally routable unicast, and not a range that embeds another address."""
    if address.is_multicast or not address.is_global:
        return False
    return not any(address in network for network in EMBEDDING if network.version == address.version)


def _parse(url: str, settings: Settings) -> tuple[SplitResult, str, int]:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallback(f"callbackUrl is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeCallback("callbackUrl is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeCallback("callbackUrl must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise UnsafeCallback("callbackUrl must not carry credentials")
    if settings.webhook_allowed_ports and port not in settings.webhook_allowed_ports:
        allowed = ", ".join(map(str, settings.webhook_allowed_ports))
        raise UnsafeCallback(f"callbackUrl must use one of the ports {allowed}")
    return parts, parts.hostname.lower().rstrip("."), port


async def _lookup(host: str, port: int, timeout_s: float) -> list[Address]:
    """getaddrinfo on this module's pool, abandoned after `timeout_s` (the thread finishes on
    its own; a lookup still waiting for a thread is dropped)."""
    future = _pool.submit(socket.getaddrinfo, host, port, proto=socket.IPPROTO_TCP)
    try:
        infos = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except (OSError, UnicodeError, TimeoutError):
        raise Unresolvable(NOT_PUBLIC) from None  # the same words: no oracle for names
    addresses = [_unmapped(ipaddress.ip_address(info[4][0].split("%", 1)[0])) for info in infos]
    if not addresses:
        raise Unresolvable(NOT_PUBLIC)
    return addresses


def _unmapped(address: Address) -> Address:
    """IPv4-mapped IPv6 (::ffff:10.0.0.1) is the IPv4 address it maps to (judged and dialled)."""
    return getattr(address, "ipv4_mapped", None) or address


def _allowed_names(settings: Settings) -> set[str]:
    return {entry.lower().rstrip(".") for entry in settings.webhook_allowed_hosts if not _is_network(entry)}


def _allowed_networks(settings: Settings) -> list[Network]:
    entries = [entry for entry in settings.webhook_allowed_hosts if _is_network(entry)]
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True
