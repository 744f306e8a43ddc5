"""Which browser origins may call the server (CORS), and the `Host` check against DNS rebinding.

Origins: pages served from localhost, 127.0.0.1 or [::1] (any port, http or https) are allowed, as
Ollama allows them; `llamarun serve --origins` / LLAMARUN_ORIGINS add more, exact or with `*`
wildcards (`*` alone allows every origin, only when given). A page on the server's own origin
(the chat page) is always allowed: its Origin names the Host it was loaded from.

Host: a DNS-rebinding page makes the browser send `Host: evil.example` to 127.0.0.1; when the
server listens on loopback only loopback names are accepted, which defeats that (as Ollama does).
Same-origin requests pass the origin check, so it is this check that stops rebinding on loopback.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
HOST_NAMES = LOCAL_NAMES | {"0.0.0.0"}  # what a client of a loopback-bound server may put in Host
PREFLIGHT_MAX_AGE = "3600"
ALLOWED_METHODS = "GET, POST, PUT, DELETE, HEAD, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"


def parse_origins(text: str | None) -> list[str]:
    """`a,b , c` -> ["a", "b", "c"] (what --origins and LLAMARUN_ORIGINS hold); trailing slashes go."""
    return [o.strip().rstrip("/") for o in (text or "").split(",") if o.strip()]


def is_loopback(bind_host: str | None) -> bool:
    """True for the addresses that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if not bind_host:
        return False
    host = bind_host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(netloc: str) -> str:
    """The name part of a Host header or URL netloc: `[::1]:80` -> `::1`, `Example.com:8` -> `example.com`."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    if netloc.count(":") > 1:  # a bare IPv6 address, no port
        return netloc
    return netloc.partition(":")[0]


class OriginPolicy:
    """Decides on Origin and Host headers; `extra` are the operator's origins (exact or `*` globs)."""

    def __init__(self, extra: Iterable[str] = (), *, check_host: bool = False) -> None:
        self.extra: Sequence[str] = tuple(o.lower() for o in extra)
        self.check_host = check_host

    def host_allowed(self, host: str | None) -> bool:
        """False only for a foreign Host while bound to loopback (no Host at all: not a browser)."""
        if not self.check_host or not host:
            return True
        return host_name(host) in HOST_NAMES

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a page on `origin` may call the server reached as `host`."""
        origin = origin.strip().lower().rstrip("/")
        try:
            parts = urlsplit(origin)
            name = parts.hostname
        except ValueError:
            return False
        if parts.scheme in ("http", "https") and name in LOCAL_NAMES:
            return True
        if host and parts.scheme in ("http", "https") and parts.netloc == host.strip().lower():
            return True  # same origin: the page this server served
        return any(origin == o or fnmatch.fnmatchcase(origin, o) for o in self.extra)


def preflight_headers(origin: str, requested_headers: str | None) -> dict[str, str]:
    """The answer to an allowed origin's preflight; the headers it asks for are allowed too (the
    browser openai client sends its own x-stainless-* headers), Authorization and Content-Type always."""
    headers = ALLOWED_HEADERS
    if requested_headers and requested_headers.strip():
        headers = f"{ALLOWED_HEADERS}, {requested_headers.strip()}"
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": headers, "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin"}


def cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers that let the page on `origin` read a response."""
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
