"""Child side of the python tool: run by file path, never imported by the worker.

- `python _pyrunner.py <spec_path> <result_path> <memory_limit_mb>` runs one call;
- `python _pyrunner.py --serve <fd>` is a fork server (see `serve`): each call is a fork of
  this small, clean interpreter, which has run no user code.

`spec_path` holds one JSON object `{code, inputs, execution_id, step, variables, libs}`. The
outcome goes to `result_path` (a private channel, so `print` cannot corrupt it) as one of
`{"kind": "value", "value": ...}`, `{"kind": "none"}` (the parent then reads stdout) or
`{"kind": "exception", "type", "message", "traceback"}` (exit status 1). A non-zero
`sys.exit` leaves the file absent and exits with that status. Imports stay few: interpreter
start-up is most of a short step's cost.
"""

import ast
import json
import math
import os
import sys

RUNNER = os.path.abspath(__file__)


def limit_memory(megabytes: int) -> None:
    # Set here rather than in a preexec_fn: preexec_fn is unsafe in a threaded parent.
    if megabytes > 0:
        import resource

        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def jsonable(value, depth=0):
    """JSON cannot hold everything Python returns: other values become str (dsl.md §8.1)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > 200:
        return str(value)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else str(k)): jsonable(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    return str(value)


def _scope_nodes(nodes):
    """Nodes of the module's own scope (not inside nested functions, classes or lambdas)."""
    nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    stack = [n for n in nodes if not isinstance(n, nested)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in ast.iter_child_nodes(node) if not isinstance(c, nested))


def compile_code(code):
    """(code object, runs_as_function): a top-level `return` makes the body a function of
    (args, input_data), asynchronous when it awaits."""
    import linecache

    linecache.cache["<step>"] = (len(code), None, code.splitlines(True), "<step>")
    tree = ast.parse(code, "<step>")
    nodes = list(_scope_nodes(tree.body))
    if not any(isinstance(n, ast.Return) for n in nodes):
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        return compile(tree, "<step>", "exec", flags=flags, dont_inherit=True), False
    is_async = any(isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith)) for n in nodes)
    header = "async def" if is_async else "def"
    wrapper = ast.parse(f"{header} __noetl_body__(args, input_data):\n    pass\n")
    wrapper.body[0].body = tree.body  # type: ignore[attr-defined]
    ast.fix_missing_locations(wrapper)
    return compile(wrapper, "<step>", "exec", dont_inherit=True), True


def _run_coroutine(value):
    if not hasattr(value, "__await__"):
        return value
    import asyncio  # only when needed: it doubles the start-up time

    async def wait():
        return await value

    return asyncio.run(wait())


def call_main(main, inputs, pool):
    import inspect

    try:
        params = inspect.signature(main).parameters.values()
    except (TypeError, ValueError):
        return main()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return main(**inputs)
    kwargs = {
        p.name: pool[p.name]
        for p in params
        if p.name in pool and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return main(**kwargs)


def _teardown(scope):
    # What module teardown does for a script's globals: files the code left open get flushed.
    scope.clear()
    import gc

    gc.collect()


def run(spec):
    inputs = spec.get("inputs") or {}
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    import atexit

    atexit.register(_teardown, scope)  # registered first, so it runs after the code's own
    scope.update(inputs)
    scope.update(
        input_data=inputs,
        args=inputs,
        execution_id=spec.get("execution_id"),
        step=spec.get("step"),
        variables=spec.get("variables") or {},
    )
    import importlib

    for alias, module in (spec.get("libs") or {}).items():
        scope[alias] = importlib.import_module(module)
    code, as_function = compile_code(spec["code"])
    try:
        outcome = eval(code, scope)  # noqa: S307 - the code is trusted (dsl.md §8.1)
        _run_coroutine(outcome)  # a module with top-level await evaluates to a coroutine
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
        # sys.exit(0) ends the code early; the result is captured as usual.
    if as_function:
        body = scope["__noetl_body__"]
        return {"kind": "value", "value": _run_coroutine(body(inputs, inputs))}  # type: ignore[operator]
    if scope.get("result") is not None:
        return {"kind": "value", "value": scope["result"]}
    main = scope.get("main")
    if callable(main):
        pool = dict(inputs, input_data=inputs, args=inputs)
        return {"kind": "value", "value": _run_coroutine(call_main(main, inputs, pool))}
    return {"kind": "none"}


def _user_traceback(exc):
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if os.path.abspath(f.filename) != RUNNER]
    )
    return "".join(te.format())


def execute(spec_path, result_path, memory_mb):
    """Run one call; returns the exit status (a non-zero sys.exit propagates instead)."""
    limit_memory(memory_mb)
    with open(spec_path, "rb") as source:
        spec = json.loads(source.read())
    status = 0
    try:
        record = run(spec)
        if record["kind"] == "value":
            record["value"] = jsonable(record["value"])
    except SystemExit:
        raise
    except BaseException as exc:  # the user's exception, reported as data
        record = {
            "kind": "exception",
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": _user_traceback(exc),
        }
        status = 1
    sys.stdout.flush()
    with open(result_path, "w", encoding="utf-8") as out:
        json.dump(record, out, ensure_ascii=False)
    return status


def serve(control_fd):
    """Fork server: one forked child per request, so a call costs a fork instead of an
    interpreter start. Returns None when the worker closes the socket; in a forked child,
    returns that child's request (the caller then runs it and exits normally).

    Request (SEQPACKET message with the child's stdout and stderr fds attached):
    `{id, spec_path, result_path, memory_mb, env}`. Replies: `{id, pid}` after the fork and
    `{id, status}` (exit status, -signal when killed) once the child is reaped."""
    import selectors
    import signal
    import socket

    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    owners = {}
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                message, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
                if not message:
                    return None
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    control.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.setsid()
                    os.dup2(fds[0], 1)
                    os.dup2(fds[1], 2)
                    for fd in fds:
                        os.close(fd)
                    os.environ.clear()
                    os.environ.update(request["env"])
                    return request
                for fd in fds:
                    os.close(fd)
                owners[pid] = request["id"]
                control.send(json.dumps({"id": request["id"], "pid": pid}).encode())
            else:
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                while owners:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    code = os.waitstatus_to_exitcode(status)
                    control.send(json.dumps({"id": owners.pop(pid, None), "status": code}).encode())


def quick_exit(status):
    """Exit a forked child without a full interpreter shutdown, which costs more than a short
    call itself, after doing what that shutdown would do for the user's code: wait for its
    threads, then run the atexit functions (its own, then `_teardown`)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main():
    sys.stdin = open(os.devnull)  # noqa: SIM115 - input() sees EOF, never a parent's pipe
    if sys.argv[1] == "--serve":
        # Modules every call needs are loaded once here, before any fork.
        import gc
        import importlib  # noqa: F401
        import linecache  # noqa: F401
        import resource  # noqa: F401
        import traceback  # noqa: F401

        # objects alive now are never collected: children then leave their pages shared
        # instead of copying them when the collector walks them
        gc.freeze()
        request = serve(int(sys.argv[2]))
        if request is None:
            sys.exit(0)
        quick_exit(execute(request["spec_path"], request["result_path"], request["memory_mb"]))
    sys.exit(execute(sys.argv[1], sys.argv[2], int(sys.argv[3])))


if __name__ == "__main__":
    main()
