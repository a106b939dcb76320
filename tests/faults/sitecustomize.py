"""A slow system resolver, for API and worker child processes (PYTHONPATH=tests/faults).

The service resolves callback hosts with the system's getaddrinfo, which reads
/etc/resolv.conf: a test cannot point it at a DNS server of its own without root. This module
(imported by Python at start-up when its directory is on PYTHONPATH) wraps getaddrinfo in the
child so that some names resolve slowly, the way a resolver that never answers behaves:

- `*.held.test`: every process blocks until the file `release` exists in DNS_FAULTS_DIR;
- `*.slow.test`: workers block the same way; other processes get 127.0.0.1 at once (the
  callback passes the check at initiate and turns slow by the time it is delivered).

While blocked, a lookup keeps a file `held-<pid>-<n>` in DNS_FAULTS_DIR, so the test can see
how many are stuck. Once released, both kinds resolve to 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
from pathlib import Path

_DIR = os.environ.get("DNS_FAULTS_DIR")
_real = socket.getaddrinfo
_count = itertools.count()
_lock = threading.Lock()


def _loopback(port: object, proto: int) -> list[tuple]:
    return [
        (socket.AF_INET, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))
    ]


def _hold(folder: Path) -> None:
    with _lock:
        marker = folder / f"held-{os.getpid()}-{next(_count)}"
    marker.touch()
    try:
        while not (folder / "release").exists():
            time.sleep(0.05)
    finally:
        marker.unlink(missing_ok=True)


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    name = host.decode() if isinstance(host, bytes) else str(host or "")
    if _DIR and name.rstrip(".").endswith((".held.test", ".slow.test")):
        worker = "worker" in sys.argv
        if name.rstrip(".").endswith(".held.test") or worker:
            _hold(Path(_DIR))
        return _loopback(port, proto)
    return _real(host, port, family, type, proto, flags)


if _DIR:
    socket.getaddrinfo = getaddrinfo
