"""Errors in each API's own shape, and the checks that turn hostile request bodies into 400s.

Ollama answers `{"error": "..."}`; OpenAI answers `{"error": {"message", "type", "param", "code"}}`.
Which shape a failure takes is decided by the path (`/v1/...` is OpenAI, everything else Ollama), so
validation errors, unknown routes, bad API keys and bugs all come back in the shape the client parses.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamarun.errors import DoesNotFitError, LlamarunError, ModelNotFoundError, RequestError, UnavailableError

log = logging.getLogger("llamarun.server")

MAX_JSON_DEPTH = 100  # far deeper than any real body or tool schema
# Far more objects and arrays than a real body holds (thousands of messages, a few tool schemas), while
# one body of 230k tiny messages would become ~1M Python objects whose garbage-collector passes stall
# every thread, the event loop included, for seconds.
MAX_JSON_CONTAINERS = 50_000
_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones survive json.loads as such
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 415: "invalid_request_error",
                 429: "rate_limit_error", 503: "server_error"}

_JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded"})
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})

class ApiError(Exception):
    """A request the server refuses: an HTTP status and one line saying why (and, for OpenAI, which param)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def is_openai_path(path: str) -> bool:
    """True for routes that answer in OpenAI's error shape."""
    return path == "/v1" or path.startswith("/v1/")


def ollama_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_body(status: int, message: str, param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(path: str, status: int, message: str, *, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error in the shape the API at `path` uses."""
    body = openai_body(status, message, param, code) if is_openai_path(path) else ollama_body(message)
    return JSONResponse(body, status_code=status, headers=headers)


def from_llamarun_error(err: LlamarunError) -> ApiError:
    """User-caused engine errors: an unknown model is 404, a model that does not fit the server's memory 503
    (with Retry-After when room may come), every other one 400 (naming the field at fault)."""
    if isinstance(err, ModelNotFoundError):
        return ApiError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, DoesNotFitError):
        retry = getattr(err, "retry_after", None)
        return ApiError(503, str(err), param="model", code="model_does_not_fit",
                        headers=None if retry is None else {"Retry-After": str(retry)})
    if isinstance(err, UnavailableError):  # a parallel rank died: the model is broken, not the request
        return ApiError(503, str(err), code="model_unavailable")
    if isinstance(err, RequestError):  # SamplingParamsError too: both name the request field at fault
        return ApiError(400, str(err), param=err.param, code=err.code)
    if hasattr(err, "http_status"):  # an error that knows its status (a failed safety guard: 503)
        return ApiError(err.http_status, str(err), code=getattr(err, "code", None))
    return ApiError(400, str(err))


def describe_validation(errors: list[Any]) -> tuple[str, str | None]:
    """One line for the first pydantic/FastAPI error, and the dotted name of the field it is about."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        return f"invalid JSON in the request body: {detail}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"invalid field '{param}': {msg}{more}" if param else f"invalid request body: {msg}{more}"), param


def _is_type_tag(part: Any) -> bool:
    # pydantic names the union member in the location: ("stop", "list[str]", 0)
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part)


def check_content_type(value: str | None) -> None:
    """Refuse bodies a web page could send cross-site without a CORS preflight as anything but JSON.

    JSON clients send `application/json`; `curl -d` sends `application/x-www-form-urlencoded`, kept for
    curl users. `text/plain` and `multipart/form-data` are what a hostile page's "simple" request uses.
    """
    if value is None or not value.strip():
        return
    media = value.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json"):
        return
    raise ApiError(415, f"unsupported Content-Type '{media[:80]}': send the body as JSON with "
                        "'Content-Type: application/json'", code="unsupported_media_type")


def decode_json(raw: bytes) -> Any:
    """The parsed body, or a 400 for anything that is not plain JSON text we can work with.

    Besides syntax: nesting deeper than MAX_JSON_DEPTH (Python's parser recurses), integers too long
    to convert, and lone UTF-16 surrogates ("\\ud800"), which no tokenizer can encode as UTF-8.
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"invalid JSON in the request body: {err}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                       code="invalid_json") from None
    except ValueError:  # int("9" * 5000): Python's limit on integer digits
        raise ApiError(400, "a number in the request body has too many digits", code="invalid_json") from None
    _check_plain(data)
    return data


def _check_plain(data: Any) -> None:
    """Walk the parsed body without recursion: depth within MAX_JSON_DEPTH, at most MAX_JSON_CONTAINERS
    objects and arrays, every string valid Unicode."""
    stack = [(data, 1)]
    containers = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                           code="invalid_json")
        containers += 1
        if containers > MAX_JSON_CONTAINERS:
            raise ApiError(400, f"the request body holds more than {MAX_JSON_CONTAINERS} JSON objects and "
                                "arrays (messages, content parts, tools); send fewer", code="invalid_json")
        if isinstance(value, dict):
            for key in value:
                _check_text(key)
            value = value.values()
        stack.extend((item, depth + 1) for item in value)


def _check_text(text: str) -> None:
    if _SURROGATE.search(text):
        raise ApiError(400, "the request body holds a lone UTF-16 surrogate (such as \\ud800), which is not "
                            "valid Unicode text", code="invalid_json")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in the API's own shape; unexpected exceptions become a logged 500."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, err: ApiError) -> JSONResponse:
        return error_response(request.url.path, err.status, err.message, param=err.param, code=err.code,
                              headers=err.headers)

    @app.exception_handler(LlamarunError)
    async def _llamarun(request: Request, err: LlamarunError) -> JSONResponse:
        return await _api(request, from_llamarun_error(err))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(list(err.errors()))
        return error_response(request.url.path, 400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(request.url.path, err.status_code, message, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, f"internal error: {type(err).__name__}: {err}")
