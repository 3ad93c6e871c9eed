"""python tool (dsl.md §8.1): result capture order, globals, libs, script, errors, limits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.system.helpers import command, with_settings
from workers.system.run import ToolServices, run_tool
from workers.system.tools import launch


@pytest.fixture(params=["fork", "spawn"])
def start_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Children from the fork server, or (its fallback) one fresh interpreter each."""
    if request.param == "spawn":
        monkeypatch.setattr(launch._server, "failed", True)
    return str(request.param)


async def py(services: ToolServices, code: str, **kw: object) -> object:
    args = kw.pop("args", None)
    config = {"kind": "python", "code": code, **kw}
    return await run_tool(command(config, args=args), services)  # type: ignore[arg-type]


async def test_result_global_and_inputs_as_globals(services: ToolServices, start_mode: str) -> None:
    out = await run_tool(
        command(
            {
                "kind": "python",
                "code": "result = {'sum': a + b, 'same': input_data == args,"
                " 'keys': sorted(input_data), 'eid': execution_id, 'step': step,"
                " 'var': variables['greeting']}",
            },
            args={"a": 1, "b": 2},
            render_context={"greeting": "hi"},
            step="add",
        ),
        services,
    )
    assert out.status == "ok", out.error
    assert out.data == {
        "sum": 3,
        "same": True,
        "keys": ["a", "b"],
        "eid": "612345678901234567",
        "step": "add",
        "var": "hi",
    }
    wire = out.result()
    assert wire["status"] == "success"
    assert wire["context"]["status"] == "success"
    assert wire["context"]["exit_code"] == 0
    assert wire["context"]["data"] == out.data


async def test_top_level_return_wins_over_result(services: ToolServices) -> None:
    out = await py(
        services, "result = 'ignored'\nif x > 0:\n    return x * 10\nreturn -1", args={"x": 4}
    )
    assert (out.status, out.data) == ("ok", 40)


async def test_return_inside_a_function_is_not_top_level(services: ToolServices) -> None:
    out = await py(services, "def helper():\n    return 5\nresult = helper() + 1")
    assert out.data == 6


async def test_main_gets_the_inputs_matching_its_parameters(services: ToolServices) -> None:
    out = await py(
        services,
        "def main(word, times, missing='default'):\n"
        "    return {'text': ' '.join([word] * times), 'missing': missing}",
        args={"word": "hi", "times": 3, "unused": True},
    )
    assert out.data == {"text": "hi hi hi", "missing": "default"}


async def test_main_with_kwargs_gets_every_input(services: ToolServices) -> None:
    out = await py(services, "def main(**kw):\n    return sorted(kw)", args={"x": 1, "y": 2})
    assert out.data == ["x", "y"]


async def test_async_main_is_awaited(services: ToolServices) -> None:
    out = await py(
        services,
        "import asyncio\nasync def main(n):\n    await asyncio.sleep(0)\n    return n + 1",
        args={"n": 1},
    )
    assert out.data == 2


async def test_stdout_json_then_stdout_and_stderr(services: ToolServices) -> None:
    out = await py(services, "print('{\"a\": [1, 2]}')")
    assert out.data == {"a": [1, 2]}
    out = await py(services, "import sys\nprint('hello')\nprint('warn', file=sys.stderr)")
    assert out.data == {"stdout": "hello\n", "stderr": "warn\n"}
    assert (out.stdout, out.stderr) == ("hello\n", "warn\n")


async def test_print_never_corrupts_the_result(services: ToolServices) -> None:
    out = await py(services, "print('noise {')\nresult = {'clean': True}")
    assert out.data == {"clean": True}
    assert out.stdout == "noise {\n"


async def test_values_json_cannot_hold_become_strings(services: ToolServices) -> None:
    out = await py(
        services,
        "import datetime, decimal\n"
        "result = {'d': datetime.date(2026, 1, 2), 'n': decimal.Decimal('1.5'),"
        " 's': {3}, 't': (1, 2), 'inf': float('inf'), 1: 'int key'}",
    )
    assert out.data == {
        "d": "2026-01-02",
        "n": "1.5",
        "s": [3],
        "t": [1, 2],
        "inf": "inf",
        "1": "int key",
    }


async def test_libs_are_imported_under_their_alias(services: ToolServices) -> None:
    out = await py(
        services, "result = m.sqrt(16) + len(j.dumps([]))", libs={"m": "math", "j": "json"}
    )
    assert out.data == 6.0


async def test_inline_script_and_env(services: ToolServices) -> None:
    config = {
        "kind": "python",
        "script": {
            "uri": "inline",
            "source": {"type": "inline", "code": "import os\nresult = os.environ['GREETING']"},
        },
        "env": {"GREETING": "hello"},
    }
    out = await run_tool(command(config), services)
    assert out.data == "hello"


async def test_worker_tokens_stay_out_of_the_child(
    services: ToolServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOETL_INTERNAL_API_TOKEN", "internal-secret")
    launch.shutdown()  # the next fork server starts with this environment
    out = await py(
        services,
        "import os\nresult = [repr(os.environ.get('NOETL_INTERNAL_API_TOKEN')),"
        " b'internal-secret' in open('/proc/self/environ', 'rb').read()]",
    )
    assert (out.status, out.data) == ("ok", ["None", False])


async def test_uncaught_exception_shape(services: ToolServices, start_mode: str) -> None:
    out = await py(services, "def fail(v):\n    raise ValueError(f'bad {v}')\n\nfail(7)\n")
    assert out.status == "error"
    error = out.error
    assert error is not None
    assert (error["kind"], error["type"], error["retryable"]) == ("exception", "ValueError", False)
    assert "bad 7" in error["message"]
    assert 'File "<step>", line 2, in fail' in error["traceback"]
    assert "raise ValueError" in error["traceback"]
    assert "_pyrunner" not in error["traceback"]  # the runner's own frames are not the user's
    wire = out.result()
    assert wire["status"] == "error" and wire["context"]["error"] == error


async def test_syntax_error_is_an_exception_outcome(services: ToolServices) -> None:
    out = await py(services, "def broken(:\n    pass")
    assert out.error is not None
    assert (out.error["kind"], out.error["type"]) == ("exception", "SyntaxError")


async def test_non_zero_exit(services: ToolServices, start_mode: str) -> None:
    out = await py(services, "import sys\nprint('partial')\nsys.exit(3)")
    assert out.status == "error"
    assert out.error is not None
    assert (out.error["kind"], out.error["exit_code"]) == ("exit_code", 3)
    assert out.exit_code == 3 and out.stdout == "partial\n"


async def test_sys_exit_zero_keeps_the_result(services: ToolServices) -> None:
    out = await py(services, "import sys\nresult = 'early'\nsys.exit(0)\nresult = 'never'")
    assert (out.status, out.data) == ("ok", "early")


async def test_timeout_kills_the_process(
    services: ToolServices, tmp_path: Path, start_mode: str
) -> None:
    marker = tmp_path / "pid"
    started = time.monotonic()
    out = await py(
        services,
        f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "print('before', flush=True)\ntime.sleep(60)",
        timeout_seconds=1,
    )
    assert time.monotonic() - started < 30  # far below the sleep: the process was killed
    assert out.status == "error" and out.error is not None
    assert (out.error["kind"], out.error["retryable"]) == ("timeout", True)
    assert out.stdout == "before\n"
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_default_timeout_comes_from_the_setting(services: ToolServices) -> None:
    out = await py(
        with_settings(services, python_timeout_seconds=0.5), "import time\ntime.sleep(60)"
    )
    assert out.error is not None and out.error["kind"] == "timeout"


async def test_memory_limit_breach_is_an_exception(services: ToolServices, start_mode: str) -> None:
    out = await py(
        with_settings(services, python_memory_limit_mb=256),
        "block = bytearray(1024 * 1024 * 1024)",
    )
    assert out.status == "error" and out.error is not None
    assert (out.error["kind"], out.error["type"]) == ("exception", "MemoryError")


async def test_memory_limit_zero_means_none(services: ToolServices) -> None:
    out = await py(
        with_settings(services, python_memory_limit_mb=0),
        "import resource\n"
        "result = resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY",
    )
    assert out.data is True


async def test_result_too_large_is_a_size_limit_error(services: ToolServices) -> None:
    small = with_settings(services, result_inline_max_bytes=2000)
    out = await py(small, "result = 'x' * 5000")
    assert out.status == "error" and out.error is not None
    assert out.error["kind"] == "size_limit"
    assert out.error["limit"] == 2000 and out.error["bytes"] > 5000
    assert out.data is None
    # Just under the limit still passes whole.
    out = await py(small, "result = 'x' * 1000")
    assert out.status == "ok" and out.data == "x" * 1000


async def test_stdout_and_stderr_keep_their_tail(services: ToolServices) -> None:
    out = await py(
        services,
        "import sys\nsys.stdout.write('a' * 200000 + 'END')\n"
        "sys.stderr.write('b' * 100000 + 'FIN')",
    )
    assert out.status == "ok"
    assert out.stdout is not None and out.stderr is not None
    assert len(out.stdout.encode()) == 64 * 1024 and out.stdout.endswith("aEND")
    assert len(out.stderr.encode()) == 64 * 1024 and out.stderr.endswith("bFIN")


async def test_a_left_behind_process_does_not_hold_the_step(
    services: ToolServices, start_mode: str
) -> None:
    # The child exits but leaves a grandchild holding stdout open; the step still ends.
    out = await py(
        services,
        "import subprocess\nsubprocess.Popen(['sleep', '60'])\nresult = 'done'",
        timeout_seconds=20,
    )
    assert (out.status, out.data) == ("ok", "done")


async def test_cancellation_kills_the_child(
    services: ToolServices, tmp_path: Path, start_mode: str
) -> None:
    marker = tmp_path / "pid"
    task = asyncio.create_task(
        py(
            services,
            f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)",
        )
    )
    deadline = time.monotonic() + 20
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the child never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)


async def test_missing_code_is_a_config_error(services: ToolServices) -> None:
    out = await run_tool(command({"kind": "python"}), services)
    assert out.error is not None and out.error["kind"] == "config"


async def test_exit_keeps_what_a_normal_interpreter_exit_does(
    services: ToolServices, tmp_path: Path, start_mode: str
) -> None:
    code = f"""
import atexit, threading, time
left_open = open({str(tmp_path / "unclosed")!r}, "w")
left_open.write("flushed")
def later():
    time.sleep(0.2)
    open({str(tmp_path / "thread")!r}, "w").write("joined")
threading.Thread(target=later).start()
atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
result = "ok"
"""
    out = await py(services, code)
    assert (out.status, out.data) == ("ok", "ok"), out.error
    assert (tmp_path / "unclosed").read_text() == "flushed"
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"


async def test_a_lost_fork_server_is_restarted(services: ToolServices) -> None:
    out = await py(services, "result = 1")
    assert out.data == 1 and launch._server.proc is not None
    first = launch._server.proc
    first.kill()
    first.wait()
    out = await py(services, "result = 2")
    assert out.data == 2
    assert launch._server.proc is not None and launch._server.proc.pid != first.pid
    assert not launch._server.failed


async def test_children_are_forked_not_started(services: ToolServices) -> None:
    out = await py(services, "import os\nresult = os.getppid()")
    assert launch._server.proc is not None and out.data == launch._server.proc.pid
