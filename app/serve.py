"""`noetl-server --mode=server`: the Falcon ASGI app under gunicorn with uvicorn workers.

Worker count (NOETL_SERVER_WORKERS) and each worker's pool (NOETL_DB_POOL_MIN/MAX) come
from settings. Tokens and the encryption key are checked before gunicorn starts, so a bad
configuration stops the start with one clear message instead of failing workers.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from core.settings import Settings

log = logging.getLogger(__name__)
EXIT_CONFIG = 2


class Worker(UvicornWorker):
    # lifespan "on": a worker whose pool or LISTEN hub cannot start must not serve requests
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "on", "access_log": False}


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from app.asgi import create_app

        return create_app(Settings.from_env())


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def preflight(settings: Settings) -> str | None:
    """Why the server must not start with these settings, or None."""
    from app.auth import TokenConfigError, check_token_settings
    from app.crypto import KeyConfigError, load_kek

    try:
        check_token_settings(settings)
        load_kek(settings)
    except (TokenConfigError, KeyConfigError) as exc:
        return str(exc)
    return None


def serve(settings: Settings) -> int:
    problem = preflight(settings)
    if problem is not None:
        log.error("server refuses to start: %s", problem, extra={"reason": problem})
        return EXIT_CONFIG
    managed_dir = None
    if not settings.prometheus_multiproc_dir:
        # gauges and counters of every gunicorn worker are merged from this folder
        managed_dir = tempfile.mkdtemp(prefix="noetl-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = managed_dir
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.server_workers,
        "worker_class": "app.serve.Worker",
        "graceful_timeout": max(1, math.ceil(settings.shutdown_grace_seconds)),
        "timeout": 60,
        "keepalive": 5,
        "accesslog": None,
        "child_exit": _child_exit,
        "proc_name": "noetl-server",
    }
    try:
        _Gunicorn(options).run()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        if managed_dir:
            shutil.rmtree(managed_dir, ignore_errors=True)
    return 0
