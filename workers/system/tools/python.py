"""python (dsl.md §8.1): the code runs in a new child process (forked from the worker's fork
server, see `launch`), with a timeout, an address-space cap, inputs as globals, and the result
on a private channel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
from pathlib import Path
from typing import Any

from workers.system.tools import launch
from workers.system.tools.base import ToolContext, ToolFailure, ToolOutcome, timeout_setting

STREAM_KEEP_BYTES = 64 * 1024
# After the child exits, how long a process it left behind may keep its pipes open.
STREAM_GRACE_SECONDS = 1.0
KILL_WAIT_SECONDS = 5.0


class _Tail:
    """The last `limit` bytes of a stream, read as it comes so a chatty child costs no memory."""

    def __init__(self, limit: int = STREAM_KEEP_BYTES) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > self.limit:
            del self.buf[: len(self.buf) - self.limit]
            self.truncated = True

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


def source_of(config: dict[str, Any]) -> str:
    """`code`, else an inline `script` (dsl.md §8.1)."""
    code = config.get("code")
    if code is None:
        script = config.get("script")
        if isinstance(script, dict):
            source = script.get("source")
            if isinstance(source, dict) and source.get("type", "inline") == "inline":
                code = source.get("code")
            elif isinstance(source, dict):
                kind = source.get("type")
                raise ToolFailure(
                    "not_supported", f"python script source {kind!r} is not supported"
                )
            elif isinstance(source, str):
                code = source
        elif isinstance(script, str):
            code = script
    if not isinstance(code, str) or not code.strip():
        raise ToolFailure("config", "python tool needs `code` or an inline `script`")
    return code


def libs_of(config: dict[str, Any]) -> dict[str, str]:
    libs = config.get("libs") or {}
    if isinstance(libs, list):  # a plain list of modules imports each under its own name
        libs = {str(m).split(".")[0]: str(m) for m in libs}
    if not isinstance(libs, dict) or not all(isinstance(m, str) for m in libs.values()):
        raise ToolFailure("config", "libs must map aliases to module names")
    return {str(alias): module for alias, module in libs.items()}


def environment(config: dict[str, Any]) -> dict[str, str]:
    env = launch.base_environment()
    extra = config.get("env") or {}
    if not isinstance(extra, dict):
        raise ToolFailure("config", "env must be a mapping")
    env.update({str(k): "" if v is None else str(v) for k, v in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"  # so the kept stdout tail is complete when the code dies
    return env


async def run(ctx: ToolContext) -> ToolOutcome:
    config = ctx.config
    code = source_of(config)
    libs = libs_of(config)
    timeout = timeout_setting(config, ctx.settings.python_timeout_seconds)
    memory_mb = ctx.settings.python_memory_limit_mb
    spec = json.dumps(
        {
            "code": code,
            "inputs": ctx.args,
            "execution_id": ctx.execution_id,
            "step": ctx.step,
            "variables": ctx.render_context,
            "libs": libs,
        },
        default=str,
    ).encode()
    limit = ctx.settings.result_inline_max_bytes
    out, err = _Tail(), _Tail()
    with tempfile.TemporaryDirectory(prefix="noetl-py-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_bytes(spec)
        child = await launch.launch(spec_path, result_path, memory_mb, environment(config))
        readers = asyncio.gather(
            launch.drain(child.stdout_fd, out.add), launch.drain(child.stderr_fd, err.add)
        )
        try:
            returncode: int | None = await asyncio.wait_for(asyncio.shield(child.exited), timeout)
        except TimeoutError:
            returncode = None
        finally:
            # Also on cancellation (the shutdown deadline): never leave the child running.
            if not child.exited.done():
                child.kill()
                await asyncio.wait([child.exited], timeout=KILL_WAIT_SECONDS)
            await _finish_reading(child, readers)
        if returncode is None:
            return ToolOutcome.failed(
                {
                    "kind": "timeout",
                    "message": f"python code timed out after {timeout:g}s",
                    "retryable": True,
                },
                stdout=out.text(),
                stderr=err.text(),
                exit_code=child.exited.result() if child.exited.done() else None,
            )
        record = _read_record(result_path, limit)
    streams = {"stdout": out.text(), "stderr": err.text(), "exit_code": returncode}
    return _outcome(record, returncode, out, streams)


async def _finish_reading(child: launch.Child, readers: asyncio.Future[Any]) -> None:
    """Let the readers reach the end of the pipes; a process the code left behind holding
    them open is killed with the whole group after a grace period, and then not waited for."""
    for _ in range(2):
        done, _pending = await asyncio.wait([readers], timeout=STREAM_GRACE_SECONDS)
        if done:
            readers.result()
            return
        child.kill()
    readers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await readers


def _read_record(path: Path, limit: int) -> dict[str, Any] | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > limit:  # refuse before parsing: a huge result must not cost the worker its memory
        return {"kind": "too_large", "bytes": size, "limit": limit}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _outcome(
    record: dict[str, Any] | None, returncode: int, out: _Tail, streams: dict[str, Any]
) -> ToolOutcome:
    kind = record.get("kind") if record else None
    if kind == "exception" and record is not None:
        return ToolOutcome.failed(
            {
                "kind": "exception",
                "message": f"{record.get('type')}: {record.get('message')}",
                "retryable": False,
                "type": record.get("type"),
                "traceback": record.get("traceback"),
            },
            **streams,
        )
    if returncode != 0:
        if returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
            message = f"python process killed by signal {name or -returncode}"
        else:
            message = f"python code exited with status {returncode}"
        return ToolOutcome.failed(
            {"kind": "exit_code", "message": message, "retryable": False, "exit_code": returncode},
            **streams,
        )
    if kind == "too_large" and record is not None:
        raise ToolFailure(
            "size_limit",
            f"python result is {record['bytes']} bytes, above the inline limit",
            bytes=record["bytes"],
            limit=record["limit"],
        )
    if kind == "value" and record is not None:
        return ToolOutcome(status="ok", data=record.get("value"), **streams)
    if not out.truncated:
        try:
            return ToolOutcome(status="ok", data=json.loads(streams["stdout"]), **streams)
        except ValueError:
            pass
    data = {"stdout": streams["stdout"], "stderr": streams["stderr"]}
    return ToolOutcome(status="ok", data=data, **streams)
