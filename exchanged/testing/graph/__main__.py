"""python -m exchanged.testing.graph --port PORT --state-dir DIR --tenant TENANT --client ID:SECRET
--mailbox alice@example.test ..."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from ..httpd import serve_until_signalled
from .auth import DEFAULT_PERMISSIONS, DEFAULT_TOKEN_LIFETIME, Client, load_certificate
from .server import GraphTestServer


def _pair(option: str, value: str, what: str) -> tuple[str, str]:
    left, sep, right = value.partition("=" if option == "--mailbox-timezone" else ":")
    if not sep or not left or not right:
        raise argparse.ArgumentTypeError(f"{option} {value!r}: expected {what}")
    return left, right


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exchanged.testing.graph",
        description="Microsoft Graph v1.0 test server (with the identity platform's token endpoint)",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument(
        "--state-dir",
        required=True,
        help="directory for mailboxes, CA and certificate (the EWS test server's: both serve one store)",
    )
    parser.add_argument(
        "--tenant", required=True, help="tenant id (GUID) or domain the token endpoint serves"
    )
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="CLIENT_ID:SECRET",
        help="an app registration with a client secret (repeatable)",
    )
    parser.add_argument(
        "--expired-client-secret",
        action="append",
        default=[],
        metavar="CLIENT_ID:SECRET",
        help="a client secret that has expired (the token endpoint answers AADSTS7000222)",
    )
    parser.add_argument(
        "--client-certificate",
        action="append",
        default=[],
        metavar="CLIENT_ID:PEM_FILE",
        help="register a certificate for client assertions (repeatable; the PEM may hold the key too)",
    )
    parser.add_argument(
        "--deny-permission",
        action="append",
        default=[],
        metavar="CLIENT_ID:PERMISSION",
        help="withhold an application permission from a client (repeatable); granted by "
        f"default: {', '.join(DEFAULT_PERMISSIONS)}",
    )
    parser.add_argument("--mailbox", action="append", default=[], help="mailbox address (repeatable)")
    parser.add_argument(
        "--mailbox-timezone",
        "--mailbox-time-zone",
        dest="mailbox_time_zone",
        action="append",
        default=[],
        metavar="ADDRESS=ZONE",
        help="a mailbox's time zone (mailboxSettings.timeZone; Windows or IANA name); the EWS test "
        "server's option of the same name, so one state dir gets one zone from either",
    )
    parser.add_argument("--default-time-zone", default="UTC", help="time zone of mailboxes without one")
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME,
        help="seconds an access token is valid (default 3599)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        clients: dict[str, Client] = {}
        for value in args.client:
            cid, secret = _pair("--client", value, "CLIENT_ID:SECRET")
            clients.setdefault(cid.lower(), Client(cid)).secrets.append(secret)
        for value in args.expired_client_secret:
            cid, secret = _pair("--expired-client-secret", value, "CLIENT_ID:SECRET")
            clients.setdefault(cid.lower(), Client(cid)).expired_secrets.append(secret)
        for value in args.client_certificate:
            cid, path = _pair("--client-certificate", value, "CLIENT_ID:PEM_FILE")
            clients.setdefault(cid.lower(), Client(cid)).certificates.append(load_certificate(path))
        for value in args.deny_permission:
            cid, permission = _pair("--deny-permission", value, "CLIENT_ID:PERMISSION")
            if cid.lower() not in clients:
                raise ValueError(f"--deny-permission {value!r}: no client {cid!r} (give --client first)")
            clients[cid.lower()].permissions.discard(permission)
        zones = dict(_pair("--mailbox-timezone", v, "ADDRESS=ZONE") for v in args.mailbox_time_zone)
        server = GraphTestServer(
            args.state_dir,
            args.mailbox,
            args.tenant,
            list(clients.values()),
            port=args.port,
            token_lifetime=args.token_lifetime,
            time_zones=zones,
            default_time_zone=args.default_time_zone,
        )
        server.start()
    except (OSError, sqlite3.Error, ValueError, argparse.ArgumentTypeError) as exc:
        print(
            f"exchanged.testing.graph: cannot start on port {args.port} "
            f"with state dir {args.state_dir}: {exc}",
            file=sys.stderr,
        )
        return 1
    return serve_until_signalled(
        server, {"url": server.url, "login_url": server.login_url, "ca_file": server.ca_file}
    )


if __name__ == "__main__":
    sys.exit(main())
