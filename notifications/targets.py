"""Where a webhook may be sent: http(s) only, never this server itself, never loopback unless a setting allows
it (the tests' local receivers), never link-local (cloud metadata), multicast or unspecified addresses.

Checked when an endpoint is saved and again before every attempt (a name may resolve elsewhere by then).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import psutil
from django.conf import settings
from django.http.request import validate_host

from core.errors import ApplicationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _refuse(message: str, code: str = "forbidden_url") -> ApplicationError:
    return ApplicationError(message, code=code, param="url")


def _own_addresses() -> set[IPAddress]:
    """Every address of this machine's interfaces: a server bound to 0.0.0.0 answers on each of them."""
    found: set[IPAddress] = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found


def _resolve(host: str, port: int) -> set[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(f"The host {host!r} of the URL cannot be resolved ({exc}).", code="unresolvable_url") from None
    return {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}


def webhook_url_check(url: str) -> str:
    """Return the URL as it will be used, or raise ``ApplicationError(param="url")`` saying why it is refused."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(f"Not a valid URL: {exc}.", code="invalid_url") from None
    if parts.scheme not in ("http", "https"):
        raise _refuse(f"Webhook URLs must use http or https, not {parts.scheme or 'no scheme'!r}.", code="invalid_url")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise _refuse("The URL has no host.", code="invalid_url")
    if parts.username or parts.password:
        raise _refuse("The URL must not carry a user name or password; authenticate with the signature.",
                      code="invalid_url")
    allow_loopback = settings.WEBHOOK_ALLOW_LOOPBACK
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    is_loopback_name = host in LOOPBACK_NAMES or (literal is not None and literal.is_loopback)
    # The names this server answers to (ALLOWED_HOSTS, wildcard "*" aside); loopback names are judged below.
    own_names = [h for h in settings.ALLOWED_HOSTS if h != "*"]
    if not (allow_loopback and is_loopback_name) and validate_host(host, own_names):
        raise _refuse(f"The URL points at this server itself ({host}).")
    addresses = {literal} if literal is not None else _resolve(host, port or (443 if parts.scheme == "https" else 80))
    own = _own_addresses()
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None) or address
        if mapped.is_loopback:
            if not allow_loopback:
                raise _refuse(f"The URL points at this server itself ({host} is {address}, a loopback address).")
            continue
        if mapped.is_unspecified or mapped in own:
            raise _refuse(f"The URL points at this server itself ({host} is {address}).")
        if mapped.is_link_local or mapped.is_multicast or mapped.is_reserved:
            raise _refuse(f"The URL points at {address}, a link-local, multicast or reserved address.")
    return url
