"""SSRF guard: a callback URL may only reach the public internet unless the operator says so.

A client-supplied URL that the service later POSTs to is a classic server-side request forgery
hole: `http://169.254.169.254/` (cloud metadata), `http://localhost:6379/`, an internal admin
page. Every address the host name resolves to must be globally routable, unless
WEBHOOK_ALLOW_PRIVATE is set or the host (name, address or network) is in WEBHOOK_ALLOWED_HOSTS.

The check runs at initiate (400 for the client) and again before every delivery, because DNS
can change in between; deliveries also never follow redirects (docs/webhooks.md).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from service.settings import Settings

MAX_URL_LENGTH = 2_048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeCallback(ValueError):
    """The callback URL is malformed, unresolvable or points somewhere it must not."""


def check(url: str, settings: Settings) -> None:
    """Raise UnsafeCallback with a message for the client unless `url` may be called.

    Blocking (DNS): the API calls it from its thread pool.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallback(f"callbackUrl is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeCallback(f"callbackUrl is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeCallback("callbackUrl must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise UnsafeCallback("callbackUrl must not carry credentials")
    host = parts.hostname.lower().rstrip(".")
    if settings.webhook_allow_private or host in _allowed_names(settings):
        return
    addresses = _resolve(host, port)
    allowed_networks = _allowed_networks(settings)
    for address in addresses:
        if any(address in network for network in allowed_networks):
            continue
        if not address.is_global or address.is_multicast:
            raise UnsafeCallback(
                f"callbackUrl host {host!r} resolves to {address}, a non-public address; "
                "the operator can allow it with WEBHOOK_ALLOWED_HOSTS"
            )


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnsafeCallback(f"callbackUrl host {host!r} does not resolve") from None
    # IPv4-mapped IPv6 (::ffff:10.0.0.1) is judged as the IPv4 address it maps to
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    return [getattr(a, "ipv4_mapped", None) or a for a in addresses]


def _allowed_names(settings: Settings) -> set[str]:
    return {entry.lower().rstrip(".") for entry in settings.webhook_allowed_hosts if not _is_network(entry)}


def _allowed_networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    entries = [entry for entry in settings.webhook_allowed_hosts if _is_network(entry)]
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True
