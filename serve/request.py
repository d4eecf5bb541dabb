"""What a generate request may carry, and the guard every request passes before a route sees it.

- ``GenerateParams``: the request's parameters, validated strictly (pydantic): integers must be
  integers (``1.9``, ``true``, ``[1]``, ``null`` are refused), seeds fit a torch generator,
  unknown keys are refused. Query strings and form fields arrive as text and are read as
  integers or numbers only when they spell one exactly.
- ``Guard``: a raw ASGI middleware that answers 413 for a declared or streamed body over the
  limit (it stops reading there: a chunked upload without Content-Length is cut off at the limit,
  not read whole), 408 for a body that stalls, and counts every response by route and status.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

SEED_MAX = 2**63 - 1  # the largest seed a torch.Generator takes as a signed 64-bit integer
STEPS_MAX = 1000
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a student folder name
_INT = re.compile(r"[+-]?\d{1,30}")
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\":/]+/)+([^\s'\":/]*)")


class GenerateParams(BaseModel):
    """Parameters of POST /v1/generate (query string, form fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    student: str = Field(default=None, pattern=NAME)  # default: the active one
    steps: StrictInt = Field(default=None, ge=1, le=STEPS_MAX)  # default: the student's fewest
    seed: StrictInt = Field(default=None, ge=0, le=SEED_MAX)  # default: drawn at random
    latency_ms: StrictInt | StrictFloat = Field(default=None, gt=0, le=3_600_000)  # a budget


def parse_params(text: dict[str, str], typed: dict | None = None) -> GenerateParams:
    """Validate query/form values (text) merged with JSON values (typed); 422 naming each field."""
    data: dict = {k: _from_text(k, v) for k, v in text.items()}
    data.update(typed or {})
    try:
        return GenerateParams.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, "invalid request: " + _describe(e)) from None


def _from_text(key: str, value: str):
    """A text value as the field's type when it spells one exactly; else left for the schema."""
    if not isinstance(value, str):
        return value
    if key in ("steps", "seed") and _INT.fullmatch(value.strip()):
        return int(value)
    if key == "latency_ms":
        try:
            x = float(value)
        except ValueError:
            return value
        return x if math.isfinite(x) else value
    return value


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_json_body(body: bytes) -> tuple[bytes, dict]:
    """A JSON request ``{"image_b64": ..., "steps": ...}`` -> (image bytes, the other keys)."""
    import base64
    import binascii

    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(
            422, f"invalid JSON body: {e.msg if hasattr(e, 'msg') else e}"
        ) from None
    if not isinstance(data, dict):
        raise HTTPException(422, "the JSON body must be an object with an 'image_b64' key")
    b64 = data.pop("image_b64", None)
    if not isinstance(b64, str):
        raise HTTPException(422, "image_b64: a base64 string with the PNG/JPEG image is required")
    try:
        return base64.b64decode(b64, validate=True), data
    except (binascii.Error, ValueError):
        raise HTTPException(422, "image_b64: not valid base64") from None


def public_message(e: BaseException) -> str:
    """An exception's message for a client: no heap addresses, no absolute paths."""
    msg = _ADDR.sub("", str(e))
    return _PATH.sub(lambda m: m.group(1) or "<path>", msg)


# --- the ASGI guard ----------------------------------------------------------------------------

ROUTES = (
    ("/v1/generate", re.compile(r"/v1/generate/?")),
    ("/v1/students/{name}/activate", re.compile(r"/v1/students/[^/]+/activate/?")),
    ("/v1/students", re.compile(r"/v1/students/?")),
    ("/healthz", re.compile(r"/healthz/?")),
    ("/metrics", re.compile(r"/metrics/?")),
    ("/v1/turntable", re.compile(r"/v1/turntable/?")),
    ("/v1/sweep", re.compile(r"/v1/sweep/?")),
    ("/", re.compile(r"/")),
    ("/static", re.compile(r"/static/.*")),
)


def route_of(path: str) -> str:
    """The route template of a path (a closed set of labels), or 'other'."""
    for name, rx in ROUTES:
        if rx.fullmatch(path):
            return name
    return "other"


_CLOSE = {"connection": "close"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(
            413, f"request body exceeds the limit of {limit} bytes", headers=_CLOSE
        )  # close: the rest of the body is never read


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float):
        super().__init__(408, f"request body not received within {seconds:g} s", headers=_CLOSE)


class Guard:
    """Body size and pace limits for every request, and a response count by route and status."""

    def __init__(self, app, max_body_bytes: int, body_timeout_s: float, on_response, on_error):
        self.app, self.limit, self.timeout = app, max_body_bytes, body_timeout_s
        self.on_response, self.on_error = on_response, on_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, status = route_of(scope["path"]), [0]

        async def counted_send(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and not declared.isdigit():
                raise HTTPException(400, "Content-Length is not a byte count")
            if declared is not None and int(declared) > self.limit:
                self.on_error("too_large")
                raise BodyTooLarge(self.limit)
            await self.app(scope, self._limited(receive), counted_send)
        except HTTPException as e:  # raised by the guard itself, outside the app's handlers
            if not status[0]:
                await _send_json(counted_send, e.status_code, {"detail": e.detail})
            else:
                raise
        finally:
            self.on_response(route, status[0] or 500)

    def _limited(self, receive):
        """``receive`` that stops at the size limit and times out a stalled body (not later
        waits for a disconnect, once the body is complete)."""
        seen, done = [0], [False]

        async def limited():
            if done[0]:
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                self.on_error("body_timeout")
                raise BodyTimeout(self.timeout) from None
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.limit:
                    self.on_error("too_large")
                    raise BodyTooLarge(self.limit)
                done[0] = not msg.get("more_body", False)
            return msg

        return limited


async def _send_json(send, status: int, obj) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
