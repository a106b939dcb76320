"""A DNS server for tests: answers A queries over UDP from a table the test changes.

It stands in for Docker's embedded DNS (127.0.0.11), whose answer for a service name changes
when the container is recreated: nginx's `resolver` is pointed at it to prove re-resolution.
Only what nginx asks is implemented: one question, A (an answer from the table) or anything
else (no answer, NOERROR).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

A, IN = 1, 1


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, type, end offset) of the packet's first question."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    qtype = struct.unpack("!H", packet[offset + 1 : offset + 3])[0]
    return ".".join(labels).lower(), qtype, offset + 5


class DnsServer:
    """`answers[name] = "127.0.0.3"` changes what the next query gets (TTL `ttl`)."""

    def __init__(self, ttl: int = 1) -> None:
        self.answers: dict[str, str] = {}
        self.ttl = ttl
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                packet, client = self.sock.recvfrom(512)
            except OSError:  # closed
                return
            name, qtype, end = _question(packet)
            self.queries.append(name)
            address = self.answers.get(name) if qtype == A else None
            flags = 0x8180  # a response, recursion desired and available, NOERROR
            header = packet[:2] + struct.pack("!HHHHH", flags, 1, 1 if address else 0, 0, 0)
            answer = b""
            if address:
                answer = struct.pack("!HHHIH", 0xC00C, A, IN, self.ttl, 4) + socket.inet_aton(address)
            self.sock.sendto(header + packet[12:end] + answer, client)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def running_dns(ttl: int = 1) -> Iterator[DnsServer]:
    server = DnsServer(ttl)
    try:
        yield server
    finally:
        server.close()
