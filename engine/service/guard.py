"""Browser and DNS-rebinding protection for the engine service (every mode, token or not).

A web page in the artist's browser can reach ``http://127.0.0.1:8765`` (a form POST needs
no CORS permission) and, through DNS rebinding, can even read the answers: its own name
resolves to 127.0.0.1 and the browser sends ``Host: evil.example``. So every request must

- name this server in ``Host`` (the loopback names, the ``--host`` it listens on, the
  machine's own names for a wildcard bind, and each ``--public-name``); anything else is
  answered 421 ``bad_host``;
- carry no ``Origin`` other than this server's own (``http://<allowed host>:<port>``), and
  no ``Sec-Fetch-Site`` other than ``same-origin`` / ``none``; anything else is answered 403
  ``cross_origin``. The add-on and the CLI send neither header.

The service sends no CORS headers, so a browser never lets another origin read an answer.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable, Optional
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from engine.service.errors import error_body

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def normalize_host(host: str) -> str:
    """``host`` (a name or address, optionally bracketed) in the form it is compared in."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        return h


def split_host_header(value: str) -> str:
    """The host part of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``)."""
    v = value.strip()
    if v.startswith("["):
        return normalize_host(v[: v.find("]") + 1] if "]" in v else v)
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return normalize_host(v)


def machine_names() -> set[str]:
    """Names and addresses of this machine (for a service bound to every interface)."""
    names: set[str] = set()
    for n in (socket.gethostname(), socket.getfqdn()):
        if n:
            names.add(normalize_host(n))
            try:
                for info in socket.getaddrinfo(n, None):
                    names.add(normalize_host(str(info[4][0])))
            except OSError:
                pass
    return names


def allowed_hosts(bind_host: str, public_names: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values a service listening on ``bind_host`` accepts."""
    names = {normalize_host(n) for n in LOOPBACK_NAMES}
    h = normalize_host(bind_host)
    if h in WILDCARDS:
        names |= machine_names()
    else:
        names.add(h)
        try:
            ipaddress.ip_address(h)
        except ValueError:  # a name: also accept the addresses it resolves to
            try:
                for info in socket.getaddrinfo(h, None):
                    names.add(normalize_host(str(info[4][0])))
            except OSError:
                pass
    names |= {normalize_host(n) for n in public_names if n and n.strip()}
    return frozenset(names)


class HostOriginGuard:
    """ASGI middleware: 421 for a foreign ``Host``, 403 for a foreign ``Origin`` / ``Sec-Fetch-Site``."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.check(scope)
        if refusal is not None:
            status, code, message, hint = refusal
            return await JSONResponse(error_body(code, message, hint), status_code=status)(scope, receive, send)
        return await self.app(scope, receive, send)

    def check(self, scope) -> Optional[tuple]:
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k, v.decode("latin-1"))
        host = headers.get(b"host")
        if host is not None and split_host_header(host) not in self.hosts:
            return (
                421, "bad_host", f"this service does not answer to the host name {host[:100]!r}",
                "use the service's own address (e.g. http://127.0.0.1:PORT through an SSH tunnel); an administrator "
                "adds other names with `kiln serve --public-name NAME`",
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._own_origin(origin, scope):
            return (
                403, "cross_origin", f"requests from web pages of other sites are refused (Origin {origin[:100]!r})",
                "use the Blender add-on, the kiln CLI, curl or a script; browsers on other sites cannot drive this service",
            )
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return (
                403, "cross_origin", f"requests from web pages of other sites are refused (Sec-Fetch-Site {site[:40]!r})",
                "use the Blender add-on, the kiln CLI, curl or a script",
            )
        return None

    def _own_origin(self, origin: str, scope) -> bool:
        try:
            parts = urlsplit(origin.strip())
            port = parts.port
        except ValueError:
            return False
        if parts.scheme != "http" or not parts.hostname or normalize_host(parts.hostname) not in self.hosts:
            return False
        server = scope.get("server") or (None, None)
        return server[1] is None or (port or 80) == server[1]
