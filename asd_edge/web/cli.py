"""``asd-edge web``: run the dashboard, or set its password or API token."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Final

from ..config import Config
from ..daemon import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from ..errors import ConfigError

__all__ = ["EXIT_HELP", "register"]

WEB_HINT: Final = "the dashboard needs the web extra: pip install 'asd-edge[web]'"
DESCRIPTION: Final = """The web dashboard: every device on the broker, and per device the live
spectrum, level and score, the alerts with their clips, the model and the health; actions
(learn, roll back, false alarm) for a logged-in user; /metrics for Prometheus.

A separate process from the daemon (an MQTT client of the same broker and an HTTP
server): a crash or a heavy page never touches detection. It binds web.host (default
127.0.0.1: open it from another machine through `ssh -L 8080:127.0.0.1:8080 DEVICE`);
any other address needs a password (--set-password) or a token (--new-token)."""

EXIT_HELP = """exit codes:
  0   stopped (SIGTERM, Ctrl-C), or the password or token was stored
  1   the new password was refused (too short, the two entries differ)
  69  the port cannot be bound
  70  internal error
  78  invalid configuration (the message names the key), e.g. an exposed web.host
      without a password; or the web extra is not installed
"""


def register(sub: Any, config_help: str, func: Callable[[argparse.Namespace], int]) -> None:
    """The ``web`` subcommand: ``func`` loads the configuration and calls
    ``args.run(config, args)``."""
    parser = sub.add_parser(
        "web",
        help="run the web dashboard (or set its password)",
        description=DESCRIPTION,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func, run=web)
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument("--host", help="address to bind (default: web.host)")
    parser.add_argument("--port", type=int, help="TCP port (default: web.port)")
    parser.add_argument(
        "--set-password",
        action="store_true",
        help="ask for a new password (twice on a terminal; one line on stdin otherwise) and "
        "store its scrypt hash as web.password_hash in --config, then exit",
    )
    parser.add_argument(
        "--new-token",
        action="store_true",
        help="print a new API token (for Prometheus and scripts: Authorization: Bearer) and "
        "store its hash as web.token_hash in --config, then exit",
    )


def web(config: Config, args: argparse.Namespace) -> int:
    """Run ``asd-edge web`` with a loaded configuration."""
    if args.set_password or args.new_token:
        return _store_secret(config, args)
    try:
        import uvicorn

        from .app import build_app
    except ImportError as exc:
        print(f"{WEB_HINT} ({exc})", file=sys.stderr)
        return EXIT_CONFIG
    host = args.host or config.web.host
    port = args.port or config.web.port
    try:
        app = build_app(config, host=host)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            ssl_certfile=config.web.tls_cert_file,
            ssl_keyfile=config.web.tls_key_file,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=3,  # open live streams never end by themselves
        )
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        print(f"cannot serve on {host}:{port} (exit {exc.code})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK if server.started else EXIT_UNAVAILABLE


def _store_secret(config: Config, args: argparse.Namespace) -> int:
    from ..config.editing import set_config_secret
    from .auth import (
        check_new_password,
        hash_password,
        hash_token,
        new_token,
        prompt_new_password,
    )

    if config.source is None:
        print("--config FILE is needed: the hash is stored in that file", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.set_password:
            try:
                password = prompt_new_password(sys.stdin, sys.stderr)
                check_new_password(password)
            except ValueError as exc:
                print(f"password refused: {exc}", file=sys.stderr)
                return 1
            set_config_secret(config.source, "password_hash", hash_password(password))
            print(
                f"web.password_hash stored in {config.source}; restart asd-edge web",
                file=sys.stderr,
            )
        if args.new_token:
            token = new_token()
            set_config_secret(config.source, "token_hash", hash_token(token))
            print(token)
            print(
                f"web.token_hash stored in {config.source}; the token above is shown once",
                file=sys.stderr,
            )
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK
