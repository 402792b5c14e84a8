"""The OpenAI chat-completions request, checked field by field, and the error every bad field becomes.

:func:`parse_chat_request` turns a decoded JSON body into a :class:`ChatRequest` or raises :class:`APIError`,
which the app answers as OpenAI-style JSON::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages[1].role", "code": "..."}}

with 400 (bad value), 404 (unknown model) or 413 (over a size limit). Images arrive as ``data:`` URLs and are
decoded here (:func:`decode_image`), so a request that reaches the batcher can no longer fail on its input.
Nothing in this module touches the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["APIError", "Limits", "ChatMessage", "ToolSpec", "ChatRequest", "parse_chat_request", "decode_image"]


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Sizes are checked before any work is done."""

    max_body_bytes: int = 16 * 2**20
    max_messages: int = 256
    max_text_chars: int = 32_768  # all text parts of all messages together
    max_images: int = 8  # images + video frames per request
    max_image_bytes: int = 4 * 2**20  # one decoded image file
    max_image_pixels: int = 1024 * 1024  # H * W of one image or frame
    max_video_frames: int = 16
    max_tokens: int = 512  # per choice
    max_n: int = 8
    max_stop: int = 4
    max_tools: int = 64
    max_prompt_tokens: int | None = None  # None: the model's positions minus max_tokens decide

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_messages", "max_text_chars", "max_images", "max_image_bytes",
                     "max_image_pixels", "max_video_frames", "max_tokens", "max_n", "max_stop", "max_tools"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Limits.{name} must be an int >= 1, got {v!r}")
        v = self.max_prompt_tokens
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"Limits.max_prompt_tokens must be an int >= 1 or None, got {v!r}")


@dataclass
class ChatMessage:
    """One message after checking. ``parts``: ``("text", str)``, ``("image", uint8 [H, W, 3])`` or
    ``("video", uint8 [T, H, W, 3])`` in order; ``tool_calls``: ``(id, name, arguments string)``."""

    role: str
    parts: list[tuple[str, Any]] = field(default_factory=list)
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec]
    tool_choice: str  # "none" | "auto" | "required" | "function"
    tool_choice_name: str | None
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    max_tokens: int | None
    stop: list[str]
    n: int
    seed: int | None
    stream: bool
    include_usage: bool


_ROLES = ("system", "user", "assistant", "tool", "developer")
_FN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# accepted and checked; everything else at the top level is refused by name
_KNOWN = {
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "stop", "n", "seed", "stream", "stream_options", "user", "presence_penalty",
    "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "response_format", "store", "metadata",
}
_DATA_URL = re.compile(r"^data:(image/(?:png|jpeg|jpg));base64,(.*)$", re.S)


def _bad(message: str, param: str | None, code: str = "invalid_value", status: int = 400) -> APIError:
    return APIError(status, message, param, code)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decode_image(url: Any, param: str, limits: Limits, min_side: int) -> np.ndarray:
    """A ``data:image/png|jpeg;base64,...`` URL -> ``uint8 [H, W, 3]``; any problem -> :class:`APIError`."""
    if not isinstance(url, str):
        raise _bad(f"{param} must be a string (a data: URL)", param, "invalid_type")
    if url.startswith(("http://", "https://")):
        raise _bad("remote image URLs are not fetched: send the image as a data:image/png;base64,... URL", param,
                   "unsupported_image_url")
    m = _DATA_URL.match(url)
    if m is None:
        raise _bad("an image must be a data:image/png;base64,... or data:image/jpeg;base64,... URL", param,
                   "invalid_image_url")
    payload = m.group(2)
    if len(payload) > 4 * (limits.max_image_bytes // 3 + 1):
        raise _bad(f"image is larger than {limits.max_image_bytes} bytes", param, "image_too_large", 413)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("image data is not valid base64", param, "invalid_base64") from None
    if len(raw) > limits.max_image_bytes:
        raise _bad(f"image is larger than {limits.max_image_bytes} bytes", param, "image_too_large", 413)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            w, h = img.size  # read from the header: nothing decoded yet
            if w * h > limits.max_image_pixels:
                raise _bad(f"image has {w}x{h} pixels, more than the limit of {limits.max_image_pixels}", param,
                           "image_too_large", 413)
            if img.format not in ("PNG", "JPEG"):
                raise _bad(f"image format {img.format} is not supported (PNG or JPEG)", param, "invalid_image")
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
    except APIError:
        raise
    except Exception as e:  # PIL raises many kinds on bad bytes (UnidentifiedImageError, OSError, SyntaxError...)
        raise _bad(f"image bytes could not be decoded ({type(e).__name__})", param, "invalid_image") from None
    if arr.ndim != 3 or arr.shape[0] < min_side or arr.shape[1] < min_side:
        raise _bad(f"image is {arr.shape[1]}x{arr.shape[0]} pixels; both sides must be at least one patch "
                   f"({min_side} pixels)", param, "image_too_small")
    return np.ascontiguousarray(arr)


def _parse_content(content: Any, param: str, role: str, limits: Limits, min_side: int,
                   counts: dict[str, int]) -> list[tuple[str, Any]]:
    if isinstance(content, str):
        counts["chars"] += len(content)
        return [("text", content)]
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or a list of content parts", param, "invalid_type")
    parts: list[tuple[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{p} must be an object with a string 'type'", p, "invalid_type")
        kind = part["type"]
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{p}.text must be a string", f"{p}.text", "invalid_type")
            counts["chars"] += len(text)
            parts.append(("text", text))
        elif kind in ("image_url", "video") and role != "user":
            raise _bad(f"{p}: {kind} parts are only allowed in user messages", f"{p}.type", "invalid_content_part")
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu if isinstance(iu, str) else None
            if url is None:
                raise _bad(f"{p}.image_url must be an object with a 'url'", f"{p}.image_url", "invalid_type")
            counts["images"] += 1
            if counts["images"] > limits.max_images:
                raise _bad(f"a request may carry at most {limits.max_images} images and video frames", p,
                           "too_many_images", 413)
            parts.append(("image", decode_image(url, f"{p}.image_url.url", limits, min_side)))
        elif kind == "video":
            v = part.get("video")
            frames = v.get("frames") if isinstance(v, dict) else None
            if not isinstance(frames, list) or not frames:
                raise _bad(f"{p}.video must be an object with a non-empty 'frames' list of data: URLs",
                           f"{p}.video.frames", "invalid_type")
            if len(frames) > limits.max_video_frames:
                raise _bad(f"a video may have at most {limits.max_video_frames} frames, got {len(frames)}",
                           f"{p}.video.frames", "too_many_frames", 413)
            counts["images"] += len(frames)
            if counts["images"] > limits.max_images:
                raise _bad(f"a request may carry at most {limits.max_images} images and video frames", p,
                           "too_many_images", 413)
            arrs = [decode_image(f, f"{p}.video.frames[{t}]", limits, min_side) for t, f in enumerate(frames)]
            if len({a.shape for a in arrs}) != 1:
                raise _bad("all frames of a video must have the same size", f"{p}.video.frames", "invalid_video")
            parts.append(("video", np.stack(arrs)))
        else:
            raise _bad(f"{p}.type {kind!r} is not supported (text, image_url, video)", f"{p}.type",
                       "invalid_content_part")
    return parts


def _parse_tool_calls(calls: Any, param: str) -> list[tuple[str, str, str]]:
    if not isinstance(calls, list) or not calls:
        raise _bad(f"{param} must be a non-empty list", param, "invalid_type")
    out = []
    for j, c in enumerate(calls):
        p = f"{param}[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(c, dict) or c.get("type", "function") != "function" or not isinstance(fn, dict):
            raise _bad(f"{p} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}", p,
                       "invalid_tool_call")
        cid, name, args = c.get("id"), fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(cid, str) or not cid:
            raise _bad(f"{p}.id must be a non-empty string", f"{p}.id", "invalid_tool_call")
        if not isinstance(name, str) or not _FN_NAME.match(name):
            raise _bad(f"{p}.function.name must match {_FN_NAME.pattern}", f"{p}.function.name", "invalid_tool_call")
        if not isinstance(args, str):
            raise _bad(f"{p}.function.arguments must be a string (JSON text)", f"{p}.function.arguments",
                       "invalid_tool_call")
        out.append((cid, name, args))
    return out


def _parse_messages(msgs: Any, limits: Limits, min_side: int) -> list[ChatMessage]:
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list", "messages", "invalid_type")
    if len(msgs) > limits.max_messages:
        raise _bad(f"messages may hold at most {limits.max_messages} entries, got {len(msgs)}", "messages",
                   "too_many_messages", 413)
    counts = {"chars": 0, "images": 0}
    out: list[ChatMessage] = []
    open_ids: set[str] = set()  # tool_call ids of the latest assistant turn not yet answered
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{p} must be an object", p, "invalid_type")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"{p}.role must be one of {list(_ROLES)}, got {role!r}", f"{p}.role", "invalid_role")
        role = "system" if role == "developer" else role
        msg = ChatMessage(role)
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad(f"{p}.name must be a string", f"{p}.name", "invalid_type")
        msg.name = name
        content = m.get("content")
        if role == "assistant":
            if m.get("tool_calls") is not None:
                msg.tool_calls = _parse_tool_calls(m["tool_calls"], f"{p}.tool_calls")
            if content is None and not msg.tool_calls:
                raise _bad(f"{p}: an assistant message needs content or tool_calls", f"{p}.content",
                           "missing_content")
        elif "tool_calls" in m:
            raise _bad(f"{p}.tool_calls is only allowed on assistant messages", f"{p}.tool_calls", "invalid_value")
        if content is None and role != "assistant":
            raise _bad(f"{p}.content is required for role {role!r}", f"{p}.content", "missing_content")
        if content is not None:
            msg.parts = _parse_content(content, f"{p}.content", role, limits, min_side, counts)
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise _bad(f"{p}.tool_call_id must be a non-empty string", f"{p}.tool_call_id", "invalid_value")
            if tid not in open_ids:
                raise _bad(f"{p}.tool_call_id {tid!r} answers no tool call of the preceding assistant message",
                           f"{p}.tool_call_id", "unknown_tool_call_id")
            open_ids.discard(tid)
            msg.tool_call_id = tid
        elif role == "assistant":
            open_ids = {c[0] for c in msg.tool_calls}
        else:
            open_ids = set()
        out.append(msg)
    if counts["chars"] > limits.max_text_chars:
        raise _bad(f"the messages hold {counts['chars']} characters of text, more than the limit of "
                   f"{limits.max_text_chars}", "messages", "context_length_exceeded", 413)
    return out


def _parse_tools(tools: Any) -> list[ToolSpec]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools", "invalid_type")
    out: list[ToolSpec] = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise _bad(f"{p} must be {{'type': 'function', 'function': {{...}}}}", p, "invalid_tool")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _FN_NAME.match(name):
            raise _bad(f"{p}.function.name must match {_FN_NAME.pattern}, got {name!r}", f"{p}.function.name",
                       "invalid_tool")
        desc = fn.get("description", "")
        if not isinstance(desc, str):
            raise _bad(f"{p}.function.description must be a string", f"{p}.function.description", "invalid_tool")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise _bad(f"{p}.function.parameters must be a JSON Schema object with type 'object'",
                       f"{p}.function.parameters", "invalid_tool")
        props = params.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
            raise _bad(f"{p}.function.parameters.properties must map names to schemas",
                       f"{p}.function.parameters.properties", "invalid_tool")
        req = params.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) and r in props for r in req):
            raise _bad(f"{p}.function.parameters.required must list names defined in properties",
                       f"{p}.function.parameters.required", "invalid_tool")
        if any(s.name == name for s in out):
            raise _bad(f"tool name {name!r} is declared twice", f"{p}.function.name", "invalid_tool")
        out.append(ToolSpec(name, desc, params))
    return out


def _parse_tool_choice(choice: Any, tools: list[ToolSpec]) -> tuple[str, str | None]:
    if choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad(f"tool_choice must be 'none', 'auto', 'required' or a named function, got {choice!r}",
                       "tool_choice")
        if choice != "none" and not tools:
            raise _bad(f"tool_choice {choice!r} needs a non-empty tools list", "tool_choice")
        return choice, None
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(fn, dict):
        raise _bad("tool_choice must be a string or {'type': 'function', 'function': {'name': ...}}", "tool_choice")
    name = fn.get("name")
    if name not in {t.name for t in tools}:
        raise _bad(f"tool_choice names function {name!r}, which is not in tools", "tool_choice.function.name")
    return "function", name


def parse_chat_request(body: Any, limits: Limits, model_ids: set[str], min_side: int) -> ChatRequest:
    """Check every field of a chat-completions body; ``min_side``: the vision patch size in pixels."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _bad(f"unsupported parameter: {unknown[0]!r}", unknown[0], "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str):
        raise _bad("model must be a string", "model", "invalid_type")
    if model not in model_ids:
        raise APIError(404, f"the model {model!r} does not exist (GET /v1/models lists them)", "model",
                       "model_not_found")
    for name, ok in (("presence_penalty", 0), ("frequency_penalty", 0)):
        v = body.get(name)
        if v is not None and (not _is_num(v) or v != ok):
            raise _bad(f"{name} is not supported (only 0)", name, "unsupported_parameter")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise _bad("logprobs are not supported", "logprobs", "unsupported_parameter")
    if body.get("logit_bias") not in (None, {}):
        raise _bad("logit_bias is not supported", "logit_bias", "unsupported_parameter")
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise _bad("response_format: only {'type': 'text'} is supported", "response_format",
                   "unsupported_parameter")
    for name in ("user",):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"{name} must be a string", name, "invalid_type")

    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not _is_num(temperature) or not 0 <= temperature <= 2:
        raise _bad(f"temperature must be a number in [0, 2], got {temperature!r}", "temperature")
    top_p = body.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if not _is_num(top_p) or not 0 < top_p <= 1:
        raise _bad(f"top_p must be a number in (0, 1], got {top_p!r}", "top_p")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    mt_param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise _bad(f"{mt_param} must be an integer >= 1, got {max_tokens!r}", mt_param)
        if max_tokens > limits.max_tokens:
            raise _bad(f"{mt_param} must be <= {limits.max_tokens}, got {max_tokens}", mt_param)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stop) > limits.max_stop:
        raise _bad(f"stop may hold at most {limits.max_stop} strings", "stop")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if not _is_int(n) or not 1 <= n <= limits.max_n:
        raise _bad(f"n must be an integer in [1, {limits.max_n}], got {n!r}", "n")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**64):
        raise _bad(f"seed must be a 64-bit integer, got {seed!r}", "seed")
    stream = body.get("stream", False)
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    so = body.get("stream_options")
    if so is not None:
        if not stream:
            raise _bad("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage"} or not isinstance(so.get("include_usage", False),
                                                                                      bool):
            raise _bad("stream_options must be {'include_usage': bool}", "stream_options")
    ptc = body.get("parallel_tool_calls", True)
    if not isinstance(ptc, bool):
        raise _bad("parallel_tool_calls must be a boolean", "parallel_tool_calls", "invalid_type")

    tools = _parse_tools(body.get("tools"))
    if len(tools) > limits.max_tools:
        raise _bad(f"tools may hold at most {limits.max_tools} functions", "tools", "too_many_tools", 413)
    choice, choice_name = _parse_tool_choice(body.get("tool_choice"), tools)
    messages = _parse_messages(body.get("messages"), limits, min_side)
    return ChatRequest(model, messages, tools, choice, choice_name, ptc, float(temperature), float(top_p),
                       max_tokens, stop, n, seed, stream, bool((so or {}).get("include_usage", False)))


def loads_body(raw: bytes, limits: Limits) -> Any:
    """The request body as JSON; too large -> 413, not JSON -> 400."""
    if len(raw) > limits.max_body_bytes:
        raise _bad(f"the request body is larger than {limits.max_body_bytes} bytes", None, "body_too_large", 413)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(f"the request body is not valid JSON: {e}", None, "invalid_json") from None
