"""Property-based fuzzing of every documented operation (schemathesis) against the real
server under gunicorn: no 5xx, and every response matches the schema the document gives.
SSE streams are left out: they run until their own timeouts, so a fuzzer would only wait.

Driven from a plain test (schemathesis's own pytest plugin does not run on pytest 9): each
operation gets a hypothesis run of at most EXAMPLES positive and EXAMPLES negative cases, and
every failure is reported at the end."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.server.conftest import INTERNAL, PLAYBOOK

EXAMPLES = 25  # per mode: about 50 requests per operation


def _seed(url: str) -> None:
    """Something to find: a playbook, a credential and a keychain entry."""
    entry = httpx.post(
        f"{url}/api/catalog/register",
        json={"content": PLAYBOOK.format(path="fuzz/sample")},
        timeout=10,
    ).json()
    httpx.post(f"{url}/api/credentials", json={"name": "fuzz", "data": {"k": "x"}}, timeout=10)
    httpx.post(
        f"{url}/api/keychain/{entry['catalog_id']}/fuzz",
        json={"token_data": {"t": 1}, "credential_type": "bearer"},
        headers=INTERNAL,
        timeout=10,
    )


def _streaming(document: dict) -> set[str]:
    """`METHOD /path` of the operations that answer text/event-stream."""
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if any(
            "text/event-stream" in (response.get("content") or {})
            for response in operation.get("responses", {}).values()
        )
    }


def test_fuzz_every_operation(server_factory) -> None:
    # SSE streams stay open until their terminal event; a short maximum age ends them
    server = server_factory(NOETL_SERVER_WORKERS="2", NOETL_SSE_MAX_STREAM_SECONDS="1")
    _seed(server.url)
    document = httpx.get(f"{server.url}/api/openapi.json", timeout=10).json()
    streams = _streaming(document)
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in streams:
            continue  # an SSE stream runs until its own timeout: the stream tests cover it
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,
            )
            def run(case) -> None:
                case.call_and_validate(
                    headers=INTERNAL,
                    checks=[not_a_server_error, response_schema_conformance],
                    timeout=30,
                )

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to negate: no parameters
            except (Exception, BaseExceptionGroup) as exc:  # collect all, then report
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("noetl_server_request_duration_seconds_count")
    )
    assert served >= operations * EXAMPLES  # the fuzzer really reached the server
