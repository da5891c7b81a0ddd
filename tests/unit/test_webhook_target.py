"""Where a webhook may point, and its signature (boxrun.webhook_target)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from pathlib import Path
from typing import Any

import pytest

from boxrun.settings import Settings, parse_networks
from boxrun.webhook_target import TargetRefused, check_url, parse_url, refusal, sign, verify

LOOPBACK = parse_networks("127.0.0.0/8,::1/128")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://user:pw@example.com/", "user or password"),
        ("http://user@example.com/", "user or password"),
        ("http:///path", "names no host"),
        ("http://exa mple.com/", "spaces or control characters"),
        ("http://example.com/\x00", "spaces or control characters"),
        ("http://example.com:99999/", "not a URL"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason) as err:
        parse_url(url)
    assert err.value.field == "body.url"


def test_a_good_url_parses() -> None:
    target = parse_url("https://hooks.example.com/in?x=1")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert parse_url("http://[::1]:8080/").host == "::1"


@pytest.mark.parametrize(
    ("addr", "kind"),
    [
        ("10.0.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("100.64.0.1", "a non-global address"),  # carrier-grade NAT
        ("::ffff:10.0.0.1", "a private address"),  # IPv4-mapped IPv6
        ("fc00::1", "a private address"),
    ],
)
def test_private_targets_are_refused(addr: str, kind: str) -> None:
    assert refusal(ipaddress.ip_address(addr), []) == kind


def test_public_targets_pass_and_allowed_networks_open_private_ones() -> None:
    assert refusal(ipaddress.ip_address("93.184.216.34"), []) is None
    assert refusal(ipaddress.ip_address("2606:4700::1"), []) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), LOOPBACK) is None
    assert refusal(ipaddress.ip_address("::1"), LOOPBACK) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), LOOPBACK) == "a private address"


async def test_literal_and_resolved_targets_are_checked() -> None:
    for url in ("http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data", "http://[::1]:9/"):
        with pytest.raises(TargetRefused, match="webhook target refused"):
            await check_url(url, [])
    # a name resolving to loopback (localhost does, on every machine) is refused unless allowed
    with pytest.raises(TargetRefused, match=r"localhost resolves to .*a loopback address"):
        await check_url("http://localhost:9/hook", [])
    target = await check_url("http://localhost:9/hook", LOOPBACK)
    assert target.addresses and all(a.is_loopback for a in target.addresses)
    with pytest.raises(TargetRefused, match="does not resolve"):
        await check_url("http://no-such-host.invalid/", [])


def test_signature_is_hmac_sha256_of_t_dot_body() -> None:
    body = b'{"id":"d1","event":"job.completed"}'
    header = sign("whsec_x", 1700000000, body)
    expected = hmac.new(b"whsec_x", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify("whsec_x", header, body, now=1700000100)
    assert not verify("whsec_x", header, body + b" ", now=1700000100)
    assert not verify("whsec_y", header, body, now=1700000100)
    assert not verify("whsec_x", header, body, now=1700000000 + 301)  # stale
    assert not verify("whsec_x", "garbage", body, now=time.time())


def test_allow_networks_setting() -> None:
    assert Settings().webhook_networks() == []
    nets = Settings(webhook_allow_networks="127.0.0.0/8, ::1/128").webhook_networks()
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="not a network"):
        Settings(webhook_allow_networks="127.0.0.0/8,nope")


def test_the_receiver_example_of_docs_webhooks_md_works() -> None:
    text = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
    match = re.search(r"```python\n(import hashlib.*?)```", text, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "docs/webhooks.md", "exec"), namespace)
    receive = namespace["receive"]
    body = b'{"id":"d1","event":"job.failed","created_at":"x","data":{}}'
    headers = {"X-Boxrun-Signature": sign("whsec_a", int(time.time()), body), "X-Boxrun-Delivery": "d1"}
    handled: list[Any] = []
    seen: set[str] = set()
    assert receive("whsec_a", headers, body, seen, handled.append) == 200
    assert receive("whsec_a", headers, body, seen, handled.append) == 200  # a retry: acknowledged
    assert len(handled) == 1
    assert receive("whsec_b", headers, body, seen, handled.append) == 401
    stale = {**headers, "X-Boxrun-Signature": sign("whsec_a", int(time.time()) - 400, body)}
    assert receive("whsec_a", stale, body, seen, handled.append) == 401
