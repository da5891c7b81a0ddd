"""Where a webhook may point (http(s), no private targets unless allowed) and how a delivery is signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from boxrun.errors import InvalidInput
from boxrun.settings import IPNetwork

MAX_URL = 2048
SIGNATURE_HEADER = "X-Boxrun-Signature"
EVENT_HEADER = "X-Boxrun-Event"
DELIVERY_HEADER = "X-Boxrun-Delivery"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(InvalidInput):
    """The URL is malformed, or it (or a name it resolves to) points where webhooks may not go."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its parts, and (once resolved) the addresses a delivery may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...] = ()


def parse_url(url: str) -> Target:
    """Syntax only: http(s), a host, no userinfo, at most 2048 characters. TargetRefused otherwise."""
    if len(url) > MAX_URL:
        raise TargetRefused(f"the URL is longer than {MAX_URL} characters", field="body.url")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise TargetRefused("the URL holds spaces or control characters", field="body.url")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a URL: {exc}", field="body.url") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the URL must be http:// or https://", field="body.url")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise TargetRefused("the URL may not carry a user or password (a token in the path will do)", field="body.url")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL names no host", field="body.url")
    return Target(url=url, scheme=parts.scheme, host=host, port=port or (443 if parts.scheme == "https" else 80))


# IPv6 prefixes that carry an IPv4 address a router or translator may forward to: 6to4 (2002::/16,
# the IPv4 address in bits 16..48) and NAT64 (the well-known 64:ff9b::/96 and the local-use
# 64:ff9b:1::/48, the IPv4 address in the last 32 bits). Such an address is refused when the IPv4
# address inside it would be: 2002:7f00:1:: is 127.0.0.1 to a 6to4 relay, whatever the Python
# version's ipaddress tables say of the prefix itself.
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr in _SIX_TO_FOUR:
        return addr.sixtofour
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.teredo is not None:
        return addr.teredo[1]  # the client's address (Teredo is not global anyway)
    return None


def refusal(addr: IPAddress, allow: Sequence[IPNetwork]) -> str | None:
    """What kind of address `addr` is if a delivery may not connect to it ("a private address"),
    else None."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr.version == net.version and addr in net for net in allow):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            why = refusal(inner, allow)
            if why is not None:
                return f"{why} ({inner}) inside an IPv6 address"
    for kind, bad in (
        ("an unspecified", addr.is_unspecified),
        ("a loopback", addr.is_loopback),
        ("a link-local", addr.is_link_local),
        ("a multicast", addr.is_multicast),
        ("a reserved", addr.is_reserved),
        ("a private", addr.is_private),
        ("a non-global", not addr.is_global),
    ):
        if bad:
            return f"{kind} address"
    return None


async def resolve(target: Target, allow: Sequence[IPNetwork]) -> Target:
    """The target with every address its host resolves to, each checked: TargetRefused if the host
    does not resolve or any address is refused (a name with one private address is refused whole)."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        found: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetRefused(f"{target.host} does not resolve ({exc})", field="body.url") from None
        found = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if addr not in found:
                found.append(addr)
        if not found:
            raise TargetRefused(f"{target.host} does not resolve", field="body.url")
    for addr in found:
        why = refusal(addr, allow)
        if why is not None:
            where = str(addr) if literal is not None else f"{target.host} resolves to {addr},"
            raise TargetRefused(
                f"webhook target refused: {where} {why} (only the webhook_allow_networks setting allows it)",
                field="body.url",
            )
    return Target(url=target.url, scheme=target.scheme, host=target.host, port=target.port, addresses=tuple(found))


async def check_url(url: str, allow: Sequence[IPNetwork]) -> Target:
    """parse_url, then resolve: what creation and every delivery run."""
    return await resolve(parse_url(url), allow)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Boxrun-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: int = 300) -> bool:
    """What a receiver does (docs/webhooks.md): a fresh t and a matching v1, compared in constant time."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={fields.get('v1', '')}")
