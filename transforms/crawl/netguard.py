"""SSRF guard: the crawl connects only to public addresses, checked on the socket it opens.

A URL list is untrusted input. A URL, or a redirect, may point at the crawler's own network: the
cloud metadata service (169.254.169.254), a database on 10.0.0.0/8, the worker itself. Checking
the host name of a URL is not enough: DNS may answer differently a moment later (rebinding), and
the same address has many spellings (`2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`).
So the check is made where the connection is made: `guarded_connection` resolves the host,
refuses every forbidden address before a packet is sent, and connects to the address it checked.
Every redirect hop opens its connection the same way.

Forbidden (`forbidden_reason`): loopback, private (RFC 1918, unique-local), link-local, shared
address space (CGNAT, 100.64.0.0/10), multicast, unspecified, reserved and documentation ranges,
and the IPv6 forms that carry one of those IPv4 addresses (IPv4-mapped, IPv4-compatible, NAT64
64:ff9b::/96, 6to4 2002::/16, Teredo). `allow_private=True` (`crawl.allow_private_networks`)
turns the guard off, for a crawl of one's own network and for Winnow's loopback sample web.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NameResolutionError, NewConnectionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class ForbiddenAddress(HTTPError):
    """A connection refused by the guard; the message names the host and the address."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(int(address))
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the crawl may not connect to `address`, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = forbidden_reason(embedded)
            return f"{inner} (as {address})" if inner else None
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared address space (CGNAT)", isinstance(address, ipaddress.IPv4Address) and address in _CGNAT),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def guarded_connection(
    address: tuple[str, int],
    timeout: Any,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> socket.socket:
    """urllib3's `create_connection`, except that every resolved address is checked before it is
    connected to; a host whose addresses are all forbidden raises `ForbiddenAddress`."""
    host, port = address
    host = host.strip("[]")
    refused: list[str] = []
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = forbidden_reason(ip)
        if reason:
            refused.append(f"{ip} is {reason}")
            continue
        sock = socket.socket(family, kind, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            last_error = err
            sock.close()
    if refused and last_error is None:
        raise ForbiddenAddress(f"refused to connect to {host}: {'; '.join(refused)}")
    if last_error is not None:
        raise last_error
    raise OSError(f"getaddrinfo returned no address for {host}")


class _Guarded:
    """`_new_conn` of urllib3's connections, through `guarded_connection`."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        try:
            return guarded_connection(
                (self._dns_host, self.port), self.timeout, self.source_address, self.socket_options
            )
        except ForbiddenAddress:
            raise
        except socket.gaierror as err:
            raise NameResolutionError(self.host, self, err) from err  # type: ignore[arg-type]
        except TimeoutError as err:
            message = f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            raise ConnectTimeoutError(self, message) from err
        except OSError as err:
            raise NewConnectionError(self, f"Failed to establish a new connection: {err}") from err  # type: ignore[arg-type]


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass
