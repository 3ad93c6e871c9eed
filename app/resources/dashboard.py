"""Dashboard routes (api.md §13): counters from the projector's read models."""

from __future__ import annotations

import falcon.asgi

from app.openapi import TIMESTAMP, any_object, array, integer, nullable, obj, string
from app.routing import Op, Route
from app.state import State

COUNTERS = (
    "total_executions",
    "successful_executions",
    "failed_executions",
    "total_playbooks",
    "active_workflows",
)
WIDGETS = [
    {"id": "execution_stats", "type": "metric", "title": "Execution Statistics", "config": {}},
    {
        "id": "recent_executions",
        "type": "table",
        "title": "Recent Executions",
        "config": {"limit": 10},
    },
    {
        "id": "execution_trend",
        "type": "chart",
        "title": "Execution Trend",
        "config": {"timeRange": "24h", "chartType": "line"},
    },
    {"id": "success_rate", "type": "metric", "title": "Success Rate", "config": {}},
    {"id": "active_playbooks", "type": "list", "title": "Active Playbooks", "config": {"limit": 5}},
]


class Stats:
    def __init__(self, state: State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = await self.state.execution.executions.dashboard()


class Widgets:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"widgets": [{**w, "data": None} for w in WIDGETS]}


def routes(state: State) -> list[Route]:
    stats = obj({**{name: integer() for name in COUNTERS}, "cancelled_executions": integer()})
    answer = obj(
        {
            "status": string(enum=["ok"]),
            "stats": stats,
            **{name: integer() for name in COUNTERS},
            "as_of": nullable(TIMESTAMP),
        }
    )
    widget = obj(
        {
            "id": string(),
            "type": string(),
            "title": string(),
            "config": any_object(),
            "data": {"type": "null"},
        }
    )
    return [
        Route(
            "/api/dashboard/stats",
            Stats(state),
            {"GET": Op("Execution and playbook counters", "api", "dashboard", answer)},
        ),
        Route(
            "/api/dashboard/widgets",
            Widgets(),
            {
                "GET": Op(
                    "The dashboard's widget set",
                    "api",
                    "dashboard",
                    obj({"widgets": array(widget)}),
                )
            },
        ),
    ]
