"""Every error the API returns is JSON ``{"detail": "<one line naming the problem>"}``.

No traceback ever reaches a client: bad input maps to 4xx with the reader's own message, a
store that cannot be reached to 503, anything unexpected to 500 with a generic line (the
traceback goes to the server log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.prefect_api import PipelineUnavailableError
from services.api.upload_files import UnsupportedUploadError
from services.recon.errors import InputError
from services.storage.errors import ConflictError, ObjectNotFoundError, StorageError

log = logging.getLogger("mrdiff.api")


class ErrorPublic(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: str


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def describe_validation_error(errors: list[Any]) -> str:
    """``body.options.samples: Input should be greater than 0`` (the first problem, one line)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{location}: {message}{more}" if location else f"{message}{more}"


def one_line(text: str) -> str:
    """Collapse whitespace so a message stays on one line."""
    return " ".join(str(text).split())


FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    detail = error.detail if isinstance(error.detail, str) else str(error.detail)
    if detail == FASTAPI_BODY_ERROR:
        detail = "malformed request body: expected UTF-8 JSON (or multipart where allowed)"
    return error_response(error.status_code, one_line(detail), getattr(error, "headers", None))


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(422, one_line(describe_validation_error(list(error.errors()))))


async def _input_error(_: Request, error: Exception) -> JSONResponse:
    return error_response(422, one_line(str(error)))


async def _unsupported(_: Request, error: Exception) -> JSONResponse:
    return error_response(415, one_line(str(error)))


async def _not_found(_: Request, error: Exception) -> JSONResponse:
    log.info("object not found: %s", error)
    return error_response(404, "not found")


async def _conflict(_: Request, error: Exception) -> JSONResponse:
    return error_response(409, one_line(str(error)))


async def _storage_unavailable(_: Request, error: Exception) -> JSONResponse:
    log.error("object storage error: %s", error)
    return error_response(
        503, "object storage unavailable; try again later", headers={"Retry-After": "5"}
    )


async def _pipeline_unavailable(_: Request, error: Exception) -> JSONResponse:
    log.error("pipeline unavailable: %s", error)
    return error_response(
        503,
        "the job pipeline (Prefect) is unavailable; try again later",
        headers={"Retry-After": "5"},
    )


async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(UnsupportedUploadError, _unsupported)
    app.add_exception_handler(ObjectNotFoundError, _not_found)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(StorageError, _storage_unavailable)
    app.add_exception_handler(PipelineUnavailableError, _pipeline_unavailable)
    app.add_exception_handler(Exception, _unexpected)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error codes, all with the :class:`ErrorPublic` body."""
    text = {
        400: "Malformed request",
        401: "Missing or invalid API key",
        404: "No such job or result for this tenant",
        409: "Conflicts with the job's state",
        413: "Request body too large",
        415: "Unsupported content type or file format",
        422: "Invalid content or parameters",
        503: "A backing service is unavailable",
    }
    return {code: {"model": ErrorPublic, "description": text.get(code, "Error")} for code in codes}
