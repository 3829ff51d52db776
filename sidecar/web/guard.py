"""Who may ask the console: the Host, Origin and token checks, apart from any server.

The console binds to loopback, but a page on any site can make a browser send requests to
loopback. Three checks keep them out, as Jupyter's do:

- **Host** must name the bound address or ``localhost`` (with or without the port), so a
  DNS-rebinding page, whose requests carry its own host name, gets 403.
- **Origin**, when a browser sends one (every POST and every cross-site fetch), must be
  this console's own, or 403.
- **The token** must come as the ``token`` query parameter, the console's cookie, or
  ``Authorization: Bearer``, or 401. A token from the query is then kept in a cookie
  (HttpOnly, SameSite=Strict), named for the port since cookies are not kept per port.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Verdict:
    """What to do with a request: ``status`` 0 lets it through; else the refusal."""

    status: int = 0
    reason: str = ""
    set_cookie: bool = False  # the token came in the query: keep it in the cookie


OK = Verdict()


class Guard:
    """The checks for one console, bound at ``host``:``port`` with ``token``."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.token = token
        self.cookie_name = f"sidecar_token_{port}"
        names = {host.lower(), "localhost"}
        if ":" in host and not host.startswith("["):
            names = {f"[{host.lower()}]", "localhost"}  # an IPv6 literal, as a Host header writes it
        self.hosts = names | {f"{name}:{port}" for name in names}
        self.origins = {f"http://{h}" for h in self.hosts}

    def check(self, path: str, method: str, query: str, headers: Mapping[str, str]) -> Verdict:
        """The verdict for a request; ``headers`` with lower-case names."""
        if headers.get("host", "").lower() not in self.hosts:
            return Verdict(403, "the Host header names neither this console's address nor localhost")
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return Verdict(403, "requests from other origins are refused")
        if path == "/health" and method in ("GET", "HEAD"):
            return OK
        if self._matches(parse_qs(query).get("token", [""])[-1]):
            return Verdict(set_cookie=True)
        if self._matches(self._cookie(headers.get("cookie", ""))):
            return OK
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credential.strip()):
            return OK
        return Verdict(401, "a token is needed: open the URL that `sidecar web` printed")

    def cookie_header(self) -> str:
        """The ``Set-Cookie`` value that keeps the token for this console."""
        return f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    def _cookie(self, header: str) -> str:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(header)
        except CookieError:  # a malformed Cookie header is no credential, and no crash either
            return ""
        morsel = cookies.get(self.cookie_name)
        return morsel.value if morsel is not None else ""

    def _matches(self, offered: str) -> bool:
        return bool(offered) and hmac.compare_digest(offered.encode(), self.token.encode())
