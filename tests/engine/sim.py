"""An in-memory server and worker around the pure engine, for the engine unit tests.

`Sim` plays the server's part: it stores events with increasing ids (as `append_events`
does), runs the engine for each posted event, keeps the decided events and commands, and after
every step checks that the cached state equals a fresh fold of the whole log. Tests play the
worker: `done(command, data)` posts `call.done` + `command.completed` as the system pool does,
`error(command, error)` posts `call.error` + `command.failed`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import engine
from engine import Command, Decision, ExecutionRef, Limits, State

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def load(name: str) -> engine.Playbook:
    text = (PLAYBOOKS / f"{name}.yaml").read_text()
    document, problems = engine.validate_playbook(text)
    assert not problems, problems
    assert document is not None
    return engine.load_playbook(document)


def decisions(decision: Decision) -> list[tuple[str, str | None]]:
    """The decided events as (event_type, step)."""
    return [(e["event_type"], e["node_name"]) for e in decision.events]


@dataclass
class Sim:
    playbook: engine.Playbook
    payload: dict[str, Any] = field(default_factory=dict)
    execution_id: int = 1000
    parent_execution_id: int | None = None
    limits: Limits = field(default_factory=Limits)
    log: list[dict[str, Any]] = field(default_factory=list)
    state: State = field(default_factory=State)
    commands: dict[str, Command] = field(default_factory=dict)
    last: Decision | None = None

    def __post_init__(self) -> None:
        self._event_ids = itertools.count(self.execution_id * 1000 + 1)
        self._command_ids = itertools.count(self.execution_id * 1000 + 500_001)
        self._producer_ids = itertools.count(9_000_000_001)
        self.execution = ExecutionRef(
            execution_id=self.execution_id,
            catalog_id=77,
            path=self.playbook.path,
            version=1,
            pool="default",
            parent_execution_id=self.parent_execution_id,
        )

    # --- the server's part ---------------------------------------------------------------

    def _ids(self) -> int:
        return next(self._command_ids)

    def _store(self, decision: Decision) -> Decision:
        ids = []
        for event in decision.events:
            assert "event_id" not in event
            stored = dict(event, event_id=str(next(self._event_ids)))
            self.log.append(stored)
            ids.append(int(stored["event_id"]))
        decision.commit(ids)
        for command in decision.commands:
            assert command.event_id is not None
            self.commands[command.command_id] = command
        self.state = decision.state
        self.last = decision
        self.check_fold()
        return decision

    def check_fold(self) -> None:
        fresh = engine.fold_all(self.log)
        assert fresh.to_json() == self.state.to_json()

    def start(self) -> Decision:
        decision = engine.start(
            self.playbook,
            self.execution,
            self.payload,
            ids=self._ids,
            now=NOW,
            limits=self.limits,
        )
        return self._store(decision)

    def post(self, event: dict[str, Any]) -> Decision:
        """Store a worker event and let the engine react, as POST /api/events does."""
        stored = dict(event)
        stored.setdefault("execution_id", str(self.execution_id))
        stored["event_id"] = str(next(self._event_ids))
        self.log.append(stored)
        # a cached state that lags behind: fold every event after its position
        pending = [e for e in self.log if int(e["event_id"]) > self.state.position]
        decision = engine.advance(
            self.playbook,
            self.execution,
            self.state,
            pending,
            ids=self._ids,
            now=NOW,
            limits=self.limits,
        )
        return self._store(decision)

    def cancel(self, **kwargs: Any) -> Decision:
        return self._store(engine.cancel(self.execution, self.state, now=NOW, **kwargs))

    def finalize(self, **kwargs: Any) -> Decision:
        return self._store(engine.finalize(self.execution, self.state, now=NOW, **kwargs))

    # --- the worker's part -----------------------------------------------------------------

    def open(self, step: str | None = None) -> list[Command]:
        """Commands not yet terminal, in issue order (optionally of one step)."""
        open_ids = set(self.state.open_commands())
        return [
            c
            for c in self.commands.values()
            if c.command_id in open_ids and (step is None or c.step == step)
        ]

    def one(self, step: str) -> Command:
        found = self.open(step)
        assert len(found) == 1, (step, [c.step for c in self.open()])
        return found[0]

    def worker_event(
        self, command: Command, event_type: str, status: str, context: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "event_type": event_type,
            "node_name": command.step,
            "status": status,
            "worker_id": "worker-1",
            "context": {"command_id": command.command_id, **context},
            "meta": {
                "command_id": command.command_id,
                "attempts": 1,
                "producer_event_id": str(next(self._producer_ids)),
            },
        }

    def started(self, command: Command) -> Decision:
        return self.post(self.worker_event(command, "command.started", "STARTED", {}))

    def done(
        self, command: Command | str, data: Any = None, *, bookkeeping: bool = True
    ) -> Decision:
        command = self.one(command) if isinstance(command, str) else command
        result = {
            "status": "success",
            "context": {"status": "success", "data": data, "error": None},
        }
        decision = self.post(
            self.worker_event(
                command, "call.done", "COMPLETED", {"call_index": 0, "result": result}
            )
        )
        if bookkeeping:
            after = self.post(
                self.worker_event(command, "command.completed", "COMPLETED", {"status": "success"})
            )
            assert not after.events and not after.drove_pass
        return decision

    def error(
        self,
        command: Command | str,
        error: dict[str, Any] | None = None,
        data: Any = None,
    ) -> Decision:
        command = self.one(command) if isinstance(command, str) else command
        error = error or {"kind": "exception", "message": "boom", "retryable": False}
        result = {"status": "error", "context": {"status": "error", "data": data, "error": error}}
        decision = self.post(
            self.worker_event(
                command,
                "call.error",
                "FAILED",
                {"call_index": 0, "error": error, "result": result},
            )
        )
        after = self.post(self.worker_event(command, "command.failed", "FAILED", {"error": error}))
        assert not after.events and not after.drove_pass
        return decision

    def run_all(self, data: Any = None) -> None:
        """Complete every open command (and the ones they lead to) with the same data."""
        while self.open() and self.state.terminal is None:
            self.done(self.open()[0], data)

    def types(self) -> list[tuple[str, str | None]]:
        return [(e["event_type"], e["node_name"]) for e in self.log]

    def engine_events(self, event_type: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.log
            if e["event_type"] == event_type and (e.get("meta") or {}).get("source") == "engine"
        ]


def parse(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)
