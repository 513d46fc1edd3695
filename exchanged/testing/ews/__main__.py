"""python -m exchanged.testing.ews --port PORT --state-dir DIR --mailbox A --service-account U:P"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from ..httpd import serve_until_signalled
from .server import DEFAULT_PASSWORD, EwsTestServer
from .soap import DATETIME_STYLES


def _service_account(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(f"--service-account {value!r}: expected USER:PASSWORD")
    return user, password


def _mailbox_timezone(value: str) -> tuple[str, str]:
    mailbox, sep, zone = value.partition("=")
    if not sep or not mailbox or not zone:
        raise argparse.ArgumentTypeError(f"--mailbox-timezone {value!r}: expected MAILBOX=WINDOWS ZONE NAME")
    return mailbox, zone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exchanged.testing.ews",
        description="EWS test server (Exchange 2016 look-alike for exchangelib)",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-dir", required=True, help="directory for mailboxes, CA and certificate")
    parser.add_argument("--mailbox", action="append", default=[], help="mailbox address (repeatable)")
    parser.add_argument(
        "--service-account",
        action="append",
        type=_service_account,
        default=[],
        help="USER:PASSWORD of an account that may impersonate every mailbox (repeatable)",
    )
    parser.add_argument(
        "--password", default=DEFAULT_PASSWORD, help="password of every mailbox (default SECRET)"
    )
    parser.add_argument(
        "--datetime-style", choices=DATETIME_STYLES, default="exchange",
        help="how date-times are written: exchange (whole seconds, Z) or grommunio (nine fractional digits)",
    )
    parser.add_argument(
        "--mailbox-timezone", action="append", type=_mailbox_timezone, default=[],
        help="MAILBOX=ZONE: the Windows zone name in the mailbox's OWA.UserOptions, e.g. "
             "'alice@example.test=Eastern Standard Time' (repeatable; others have none)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = EwsTestServer(
            args.state_dir, args.mailbox, dict(args.service_account), port=args.port, password=args.password,
            datetime_style=args.datetime_style, mailbox_timezones=dict(args.mailbox_timezone),
        )
        server.start()
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(
            f"exchanged.testing.ews: cannot start on port {args.port} with state dir {args.state_dir}: {exc}",
            file=sys.stderr,
        )
        return 1
    return serve_until_signalled(server, {"url": server.url, "ca_file": server.ca_file})


if __name__ == "__main__":
    sys.exit(main())
