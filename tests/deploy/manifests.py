"""Readers for the deployment files: docker-compose.yml, .env.example, deploy/k8s, Dockerfile.

No Docker engine or cluster is needed: the files are parsed, and what they name (commands,
variables, ports, paths) is checked against the code that serves them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE = "noetl-control-plane"
ROLES = ("server", "publisher", "projector", "system")

# The only variables outside core.settings that the deployment files may set: the Postgres
# image's own, on the postgres service only.
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}

_ACTIVE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_COMMENTED = re.compile(r"^#\s*([A-Z][A-Z0-9_]*)=")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def role_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the project's image (migrate and the four roles)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).split(":")[0] == IMAGE
    }


def read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """Compose env_file rules: `NAME=value` lines are set; `# NAME=…` lines only name a setting.

    Returns the active values and every name mentioned, in order (duplicates kept).
    """
    active: dict[str, str] = {}
    named: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if match := _ACTIVE.match(line):
            active[match.group(1)] = match.group(2)
            named.append(match.group(1))
        elif match := _COMMENTED.match(line):
            named.append(match.group(1))
    return active, named


def env_files(service: dict[str, Any]) -> list[tuple[Path, bool]]:
    out = []
    for item in service.get("env_file", []):
        if isinstance(item, str):
            out.append((ROOT / item, True))
        else:
            out.append((ROOT / item["path"], bool(item.get("required", True))))
    return out


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """The environment compose gives a service: its env files in order, then `environment`."""
    env: dict[str, str] = {}
    for path, required in env_files(service):
        if path.exists() or required:
            env.update(read_env_file(path)[0])
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: str(v) for k, v in environment.items()})
    return env


def healthcheck_url(service: dict[str, Any]) -> str:
    """The URL a compose health check fetches (the python one-liner or wget)."""
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"https?://[^\s'\"]+", test)
    assert match, f"no URL in health check {test!r}"
    return match.group(0)


def load_k8s() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/k8s by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S_DIR.glob("*.yaml"))
    }


def k8s_objects() -> list[dict[str, Any]]:
    """The Kubernetes objects (kustomization.yaml is kustomize's own file, not one of them)."""
    files = load_k8s()
    files.pop("kustomization.yaml", None)
    return [doc for docs in files.values() for doc in docs]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def noetl_server_argvs(container: dict[str, Any]) -> list[list[str]]:
    """Every `noetl-server` invocation a container makes: the image's entrypoint with `args`,
    or `noetl-server …` inside a `sh -c` script."""
    command = container.get("command")
    if not command:
        return [list(container.get("args", []))]
    if command[0] == "noetl-server":
        return [list(command[1:]) + list(container.get("args", []))]
    assert command[:2] == ["sh", "-c"], f"unexpected command {command}"
    found = re.findall(r"noetl-server((?:\s+[^\s;|&]+)*)", command[2])
    assert found, f"no noetl-server call in {command[2]!r}"
    return [shlex.split(args) for args in found]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def _matches(pattern: str, rel: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parents; `**` spans folders."""
    regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
    parts = rel.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))


def build_context(files: list[str]) -> list[str]:
    """The repository files (relative paths) that `docker build .` sends, per .dockerignore."""
    patterns = dockerignore_patterns()
    kept = []
    for rel in files:
        excluded = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if _matches(pattern.lstrip("!"), rel):
                excluded = not negate
        if not excluded:
            kept.append(rel)
    return kept
