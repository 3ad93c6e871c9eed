"""`noetl-server`: one console command for every role and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from core.logs import setup_logging
from core.schema import EXIT_SCHEMA_MISMATCH, SchemaMismatch, check_schema, package_revision
from core.settings import Settings, SettingsError, mask_url

log = logging.getLogger("noetl")
MODES = ("server", "publisher", "projector", "system")
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noetl-server", description="NoETL control plane: run a role or an operator command."
    )
    parser.add_argument("--mode", choices=MODES, help="the role this process runs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    migrate = sub.add_parser(
        "migrate", help="alembic upgrade head, then register system/ playbooks"
    )
    migrate.add_argument("--database-url", help="database to migrate (default NOETL_DATABASE_URL)")

    check = sub.add_parser("check-schema", help="compare the database's and the package's revision")
    check.add_argument("--database-url", help="database to check (default NOETL_DATABASE_URL)")

    dev = sub.add_parser("dev", help="every role on an embedded Postgres and NATS")
    dev.add_argument("--data-dir", help="data folder (default NOETL_DATA_DIR, ./.noetl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"noetl-server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    role = args.mode or args.command or "cli"
    setup_logging(role, settings.log_level, settings.log_format)
    if args.command == "migrate":
        return _migrate(args.database_url or settings.database_url)
    if args.command == "check-schema":
        return _check_schema(args.database_url or settings.database_url)
    if args.command == "dev":
        from cli.dev import run_dev

        return run_dev(settings, args.data_dir)
    if args.mode is None:
        build_parser().print_usage(sys.stderr)
        print("noetl-server: give --mode or a command", file=sys.stderr)
        return EXIT_CONFIG
    return run_role(args.mode, settings)


def _migrate(url: str) -> int:
    from core.migrate import upgrade

    upgrade(url)
    log.info("migrated", extra={"database": mask_url(url), "revision": package_revision()})
    return 0


def _check_schema(url: str) -> int:
    try:
        found = check_schema(url)
    except SchemaMismatch as exc:
        print(f"database: {exc.database or '-'}\npackage:  {exc.package}")
        return 1
    print(f"database: {found}\npackage:  {found}")
    return 0


def run_role(mode: str, settings: Settings) -> int:
    log.info("settings", extra={"settings": settings.masked()})
    urls = [settings.database_url]
    if mode == "projector":
        urls = [settings.target_database_url]
    elif mode == "system" and not os.environ.get("NOETL_DATABASE_URL"):
        # the system pool talks to the server over HTTP; it checks only a database it is given
        urls = []
    try:
        for url in urls:
            check_schema(url)
    except SchemaMismatch as exc:
        log.error(
            str(exc), extra={"database_revision": exc.database, "package_revision": exc.package}
        )
        return EXIT_SCHEMA_MISMATCH
    if mode == "server":
        from app.serve import serve

        return serve(settings)
    from workers.daemon import Daemon
    from workers.placeholder import idle_main

    daemon = Daemon(mode, settings)
    return asyncio.run(daemon.run(idle_main(database=mode != "system")))


if __name__ == "__main__":
    sys.exit(main())
