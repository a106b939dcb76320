"""Fetching a presigned S3 link from somewhere other than where it points.

A link names S3_PUBLIC_ENDPOINT (in compose, localhost:9000, for browsers on the host), which a
container cannot reach. The locustfile's --s3-address sends the request to another address
(minio:9000) with the link's own Host header, which its SigV4 signature covers.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def presigned_request(location: str, address: str = "") -> tuple[str, dict[str, str]]:
    """(url, headers) to fetch the presigned `location`, through `address` (host:port) when given."""
    if not address:
        return location, {}
    parts = urlsplit(location)
    return urlunsplit(parts._replace(netloc=address)), {"Host": parts.netloc}
