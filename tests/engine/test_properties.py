"""Invariants under any order of worker events (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.sim import Sim, load

LOOP = load("loop_parallel")
JOIN = load("join")


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.integers(0, 9), max_size=8),
    width=st.integers(1, 4),
    data=st.data(),
)
def test_parallel_loop_in_any_order(items: list[int], width: int, data: st.DataObject) -> None:
    sim = Sim(LOOP, payload={"items": items, "width": width})
    sim.start()
    issued: list[int] = []
    failed = 0
    while sim.state.terminal is None:
        open_ = sim.open()
        assert open_, "a running execution always has an open command"
        loop_open = [c for c in open_ if c.step == "start"]
        assert len(loop_open) <= width
        issued.extend(
            c.meta["iteration_index"] for c in loop_open if c.meta["iteration_index"] not in issued
        )
        command = open_[data.draw(st.integers(0, len(open_) - 1))]
        if command.step == "start" and data.draw(st.booleans()):
            failed += 1
            sim.error(command)
        else:
            sim.done(command, 1)
    assert sim.state.terminal == "COMPLETED"
    assert sorted(issued) == list(range(len(items)))
    # routed on loop.done: save when every iteration succeeded, report otherwise
    routed = [e["node_name"] for e in sim.engine_events("step.enter")][1:]
    assert routed == (["report"] if failed else ["save"])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_join_fires_once_in_any_order(data: st.DataObject) -> None:
    sim = Sim(JOIN)
    sim.start()
    while sim.state.terminal is None:
        open_ = sim.open()
        sim.done(open_[data.draw(st.integers(0, len(open_) - 1))], "x")
    entered = [e["node_name"] for e in sim.engine_events("step.enter")]
    assert sorted(entered) == ["a", "a2", "b", "merge", "start"]
    assert entered[-1] == "merge"
