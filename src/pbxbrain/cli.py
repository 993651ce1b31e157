"""The ``pbxbrain`` command: run, check-config, migrate, route."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from pbxbrain import __version__

DEFAULT_CONFIG = os.environ.get("PBXBRAIN_CONFIG", "/etc/pbxbrain/pbxbrain.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbxbrain", description="Call-control brain for Asterisk (ARI + AMI)."
    )
    parser.add_argument("--version", action="version", version=f"pbxbrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (until SIGTERM)")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="YAML file (default: %(default)s)")
    run.add_argument("--log-level", default=os.environ.get("PBXBRAIN_LOG_LEVEL", "INFO"))

    check = sub.add_parser("check-config", help="validate a YAML config, print every problem")
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG)

    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("--config", default=DEFAULT_CONFIG)

    route = sub.add_parser("route", help="dry run: print how a call would be routed, and why")
    route.add_argument("--config", default=DEFAULT_CONFIG)
    route.add_argument("--from", dest="caller", required=True, help="the caller's number")
    route.add_argument("--to", dest="dialed", required=True,
                       help="the dialed DID (or a short number with --internal)")
    route.add_argument("--at", help="when, e.g. 2026-11-25T10:00+03:00 (default: now)")
    route.add_argument("--owner", help="staff id of the caller's owner in the CRM")
    route.add_argument("--busy", action="append", default=[], metavar="STAFF",
                       help="a busy manager (repeat, or comma-separate)")
    route.add_argument("--offline", action="append", default=[], metavar="STAFF",
                       help="a manager whose phone is unregistered (repeat, or comma-separate)")
    route.add_argument("--internal", action="store_true",
                       help="the call comes from a desk phone (short numbers work)")
    route.add_argument("--json", action="store_true", help="print the plan as JSON")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every plugin it sets up at INFO; its warnings are what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    from pbxbrain.config import ConfigError, check_config_main, load_config

    if args.command == "check-config":
        return check_config_main(args.file)
    if args.command == "route":
        from pbxbrain.cli_route import route_main

        return route_main(args.config, args.caller, args.dialed, args.at, args.owner,
                          args.busy, args.offline, args.json, args.internal)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"pbxbrain: fix {args.config} (pbxbrain check-config {args.config}) and retry",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pbxbrain: cannot read config {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        _setup_logging("INFO")
        from pbxbrain.adapters.migrate import migrate

        revision = asyncio.run(migrate(config.database))
        print(f"database at revision {revision}")
        return 0
    _setup_logging(args.log_level)
    import uvloop

    from pbxbrain.app import serve

    # libuv's loop: a call is a few dozen socket round trips (ARI, AMI, the database's
    # thread), and the stock loop's per-callback cost was a quarter of pbxbrain's CPU.
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
