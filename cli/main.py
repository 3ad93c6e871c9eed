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

    outbox = sub.add_parser("outbox", help="outbox operations").add_subparsers(
        dest="outbox_command", metavar="ACTION", required=True
    )
    requeue = outbox.add_parser("requeue-dead", help="move dead-letter rows back into the outbox")
    requeue.add_argument("ids", nargs="*", help="outbox ids (default: every dead row)")

    projector = sub.add_parser("projector", help="projector operations").add_subparsers(
        dest="projector_command", metavar="ACTION", required=True
    )
    report = projector.add_parser("report", help="per-playbook report from the read models")
    report.add_argument(
        "--from", dest="date_from", help="first day, YYYY-MM-DD (default: 7 days ago)"
    )
    report.add_argument("--to", dest="date_to", help="last day, YYYY-MM-DD (default: today)")
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
        return _migrate(args.database_url or settings.database_url, settings)
    if args.command == "check-schema":
        return _check_schema(args.database_url or settings.database_url)
    if args.command == "dev":
        from cli.dev import run_dev

        return run_dev(settings, args.data_dir)
    if args.command == "outbox":
        from workers.publisher import requeue_dead_command

        return requeue_dead_command(settings, args.ids)
    if args.command == "projector":
        from workers.projector import report_command

        return report_command(settings, args.date_from, args.date_to)
    if args.mode is None:
        build_parser().print_usage(sys.stderr)
        print("noetl-server: give --mode or a command", file=sys.stderr)
        return EXIT_CONFIG
    return run_role(args.mode, settings)


def _migrate(url: str, settings: Settings) -> int:
    from cli.system_playbooks import register_system_playbooks
    from core.migrate import upgrade

    upgrade(url)
    log.info("migrated", extra={"database": mask_url(url), "revision": package_revision()})
    register_system_playbooks(url, settings)
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
    import importlib

    from workers.daemon import Daemon

    role_module = importlib.import_module(f"workers.{mode}")
    daemon = Daemon(mode, settings)
    return asyncio.run(daemon.run(role_module.main))


if __name__ == "__main__":
    sys.exit(main())
