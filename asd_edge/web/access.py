"""Who may see and do what on the dashboard: the bind address, the password, the token,
sessions and CSRF."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Final

from starlette.requests import HTTPConnection

from ..config import WebConfig
from ..errors import ConfigError
from .auth import csrf_matches, new_csrf_token, verify_password, verify_token

__all__ = ["Access", "Visitor", "is_loopback"]

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.1``, ``::1``, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Visitor:
    """What one request may do."""

    may_view: bool
    """Pages, live data, clips and metrics."""
    may_act: bool
    """Rollback, learn and false-alarm actions (an authenticated user)."""
    by_token: bool = False
    """Authenticated by ``Authorization: Bearer`` (no cookie: no CSRF check needed)."""


class Access:
    """The dashboard's rules.

    - On a loopback address without a password, anyone who can reach it (this machine,
      an SSH tunnel) may view; actions still need a login, so a password must be set.
    - With a password (or a token), everything needs the login (or the token).
    - On any other address a password or a token is required: ``check`` refuses to start.
    """

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.exposed = not is_loopback(config.host)
        self.open_view = config.password_hash is None and config.token_hash is None

    def check(self) -> None:
        """ConfigError when the dashboard would be exposed without a password or token, or
        when a stored hash is malformed (found now, not at the first login)."""
        for key, stored, verify in (
            ("password_hash", self.config.password_hash, verify_password),
            ("token_hash", self.config.token_hash, verify_token),
        ):
            if stored is not None:
                try:
                    verify("", stored)
                except ValueError as exc:
                    raise ConfigError(f"web.{key}: {exc}; set it again with asd-edge web") from None
        if self.exposed and self.open_view:
            raise ConfigError(
                "web.host: expected web.password_hash or web.token_hash when the dashboard "
                f"binds a non-loopback address, got host {self.config.host!r} and neither "
                "(run asd-edge web --set-password, or keep host 127.0.0.1 and use an SSH "
                "tunnel)"
            )

    @property
    def cookie_secure(self) -> bool:
        if self.config.cookie_secure is not None:
            return self.config.cookie_secure
        return self.config.tls_cert_file is not None

    def visitor(self, conn: HTTPConnection) -> Visitor:
        """What the request's session or token allows."""
        header = conn.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        stored = self.config.token_hash
        bearer = scheme.lower() == "bearer" and bool(token)
        if stored is not None and bearer and verify_token(token.strip(), stored):
            return Visitor(may_view=True, may_act=True, by_token=True)
        since = conn.session.get("since")
        fresh = isinstance(since, int | float) and (
            0 <= time.time() - since < self.config.session_hours * 3600
        )
        logged_in = (
            bool(conn.session.get("user")) and fresh and self.config.password_hash is not None
        )
        return Visitor(may_view=logged_in or self.open_view, may_act=logged_in)

    def csrf_token(self, conn: HTTPConnection) -> str:
        """The session's CSRF token (made on first use)."""
        token = conn.session.get("csrf")
        if not isinstance(token, str) or not token:
            token = conn.session["csrf"] = new_csrf_token()
        return token

    def csrf_ok(self, conn: HTTPConnection, visitor: Visitor) -> bool:
        """An action's request carries the session's token in ``X-CSRF-Token`` and, when the
        browser says where it comes from, comes from this site."""
        if visitor.by_token:
            return True
        site = conn.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = conn.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != conn.headers.get("host"):
            return False
        return csrf_matches(conn.session.get("csrf"), conn.headers.get("x-csrf-token"))
