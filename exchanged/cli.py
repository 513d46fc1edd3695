"""`exchanged` command line: dispatches to the module that owns each command."""

from __future__ import annotations

import argparse
import os
import sys

from exchanged import __version__

DEFAULT_CONFIG = "/etc/exchanged/exchanged.yaml"


def default_config() -> str:
    return os.environ.get("EXCHANGED_CONFIG", DEFAULT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exchanged", description=__doc__)
    parser.add_argument("--version", action="version", version=f"exchanged {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    run.add_argument("--config", default=None,
                     help=f"config file (default: $EXCHANGED_CONFIG or {DEFAULT_CONFIG})")

    check = sub.add_parser("check-config", help="validate the config file like `sshd -t`")
    check.add_argument("--config", default=None)
    check.add_argument("--connect", action="store_true",
                       help="also log in to Exchange and check every enabled user")
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")

    demo = sub.add_parser("demo", help="a complete local setup with no outside server (needs the 'testing' "
                                        "extra, which the Debian package leaves out: run it from a checkout)")
    demo.add_argument("--once", action="store_true", help="exit after the first sync")
    demo.add_argument("--dir", default=None, help="working directory (default: a new temporary one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["run"]:
        from exchanged.signals import remember_early

        remember_early()  # a SIGTERM from now on stops the daemon cleanly (exchanged/signals.py)
    args = build_parser().parse_args(argv)
    if getattr(args, "config", "unset") is None:
        args.config = default_config()
    if args.command == "run":
        from exchanged.daemon import cli_run

        return cli_run(args)
    if args.command == "check-config":
        from exchanged.check_config import cli_check_config

        return cli_check_config(args)
    if args.command == "demo":
        from exchanged.demo import cli_demo

        return cli_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
