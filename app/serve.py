"""`noetl-server --mode=server`: the Falcon ASGI app under gunicorn with uvicorn workers."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from core.settings import Settings


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


def serve(settings: Settings) -> int:
    if not settings.prometheus_multiproc_dir:
        # gauges and counters of every gunicorn worker are merged from this folder
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="noetl-prom-")
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.server_workers,
        "worker_class": "uvicorn_worker.UvicornWorker",
        "graceful_timeout": int(settings.shutdown_grace_seconds),  # gunicorn takes whole seconds
        "timeout": 60,
        "keepalive": 5,
        "accesslog": None,
        "child_exit": _child_exit,
        "proc_name": "noetl-server",
    }
    _Gunicorn(options).run()
    return 0
