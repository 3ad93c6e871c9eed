"""Metrics shared by every role (envelope.md §8)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Gauge

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

BUILD_INFO = Gauge(
    "noetl_build_info", "Build of this process", ["role", "version"], multiprocess_mode="max"
)


def package_version() -> str:
    try:
        return version("noetl-control-plane")
    except PackageNotFoundError:
        return "0+unknown"


def mark_build(role: str) -> None:
    BUILD_INFO.labels(role=role, version=package_version()).set(1)
