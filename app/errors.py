"""The one JSON error format of api.md §2, for every error the server answers.

Resources raise `ApiError`; falcon's own errors (unknown route, wrong method, ...) and
unexpected exceptions are mapped to the same `{"detail", "code"}` body by the handlers
registered in `install()`. A 500 never carries exception text; its log line has the
request id.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import falcon.asgi

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error answer: status, stable snake_case code and the FastAPI-style detail."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: Any,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.detail, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def problem(
    loc: list[str | int], msg: str, type_: str = "value_error", line: int | None = None
) -> dict[str, Any]:
    """One item of a 422 detail list; `path` is the JSON pointer of `loc` without its source."""
    inner = loc[1:] if loc and loc[0] in ("body", "query", "path") else loc
    pointer = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in inner)
    return {"loc": list(loc), "msg": msg, "type": type_, "path": pointer, "line": line}


def validation_error(problems: list[dict[str, Any]], code: str = "validation_error") -> ApiError:
    return ApiError(422, code, problems)


def not_found(code: str, detail: str) -> ApiError:
    return ApiError(404, code, detail)


def unavailable(code: str, detail: str, retry_after: int) -> ApiError:
    return ApiError(503, code, detail, headers={"Retry-After": str(retry_after)})


# falcon's HTTPError classes by status, for the codes of api.md §2
_FALCON_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def _apply(resp: falcon.asgi.Response, error: ApiError) -> None:
    resp.status = error.status
    for name, value in error.headers.items():
        resp.set_header(name, value)
    resp.media = error.body()


async def _api_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ApiError, params: dict
) -> None:
    _apply(resp, ex)


async def _falcon_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: dict
) -> None:
    status = ex.status_code
    if status == 404:
        detail: Any = "Not Found"
    elif status == 405:
        detail = "Method Not Allowed"
    else:
        detail = ex.description or ex.title
    code = _FALCON_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    _apply(resp, ApiError(status, code, detail, headers=dict(ex.headers or {})))


async def _unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: dict
) -> None:
    log.error(
        "unhandled error",
        exc_info=ex,
        extra={
            "request_id": getattr(req.context, "request_id", None),
            "method": req.method,
            "route": req.uri_template,
        },
    )
    _apply(resp, ApiError(500, "internal_error", "internal error"))


def install(app: falcon.asgi.App) -> None:
    # falcon picks the handler of the most specific class in the exception's MRO
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _falcon_error)
    app.add_error_handler(ApiError, _api_error)
