"""The FastAPI app: ``GET /v1/models``, ``POST /v1/chat/completions`` (plain or SSE), ``GET /health``.

    engine = ModelEngine(load_model("runs/rl/checkpoints"))
    app = create_app(engine, "k25mini-nano")
    uvicorn.run(app, port=8000)          # or: python -m k25mini.serve --checkpoint DIR

Every refusal is OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``) with a 4xx status; a
full queue answers 503 with ``Retry-After``. See docs/serve.md for the mapping and the limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from k25mini.data.tokenizer import Tokenizer
from k25mini.serve.engine import FMT, Batcher, Completion, GenJob, Params, QueueFull, parse_completion, render_prompt
from k25mini.serve.protocol import APIError, ChatRequest, Limits, loads_body, parse_chat_request

__all__ = ["create_app", "load_model", "ServerThread"]


def load_model(path: str | os.PathLike, preset: str = "nano"):
    """A K2.5 model from a ``save_pretrained`` folder (config.json + safetensors in the published names) or from a
    training checkpoint (``model.safetensors`` + ``state.json``, a checkpoint root or an out_dir: its newest
    verified checkpoint) whose architecture is the preset ``preset``."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"checkpoint must be a directory, got {str(p)!r}")
    if (p / "config.json").is_file():
        from k25mini.interop import load_pretrained

        model = load_pretrained(p)
        if not hasattr(model, "vision_tower"):
            raise ValueError(f"checkpoint {str(p)!r} is a text-only K2 model; the server needs a K2.5 (vision) config")
        return model.eval()
    from k25mini.config import preset as make_preset
    from k25mini.multimodal import K25ForConditionalGeneration
    from k25mini.train import load_weights

    model = K25ForConditionalGeneration(make_preset(preset))
    load_weights(model, p)
    return model.eval()


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def _visible(tok: Tokenizer, ids: list[int]) -> list[int]:
    """Bytes and tool-call markers; other special tokens (a turn or media marker the model should not have
    written, unused ids) carry no text for the client."""
    markers = {tok.token_id(m) for m in FMT.specials()}
    return [t for t in ids if t < 256 or t in markers]


def _choice(tok: Tokenizer, req: ChatRequest, forced: list[int], c: Completion, index: int) -> dict[str, Any]:
    ids = forced + c.tokens
    if c.finish == "stop" and ids:
        ids = ids[:-1]  # the stop token itself (<|im_end|> / <|eos|>) is not part of the message
    text, cut = _cut_at_stop(tok.decode(_visible(tok, ids)), req.stop)
    finish = "stop" if cut else c.finish
    if req.tool_choice in ("required", "function") and text.rfind(FMT.call_begin) > text.rfind(FMT.call_end):
        text += FMT.call_end  # a forced call the model left open: close it so the client still gets the call
    if req.tool_choice == "none":
        content, calls = parse_completion(text)[0], []
    else:
        content, calls = parse_completion(text, parallel=req.parallel_tool_calls)
    msg: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if calls:
        msg["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": n, "arguments": a}} for n, a in calls]
        if finish == "stop" or req.tool_choice in ("required", "function"):
            finish = "tool_calls"
    return {"index": index, "message": msg, "finish_reason": finish, "logprobs": None}


def create_app(engine: Any, model_id: str, *, limits: Limits | None = None, max_queue: int = 128,
               max_batch: int = 32, batch_wait_s: float = 0.01, default_max_tokens: int = 128,
               template: str = "chat") -> FastAPI:
    """The server over ``engine`` (:class:`~k25mini.serve.engine.ModelEngine` or ``ScriptedEngine``), serving
    it as model ``model_id``. ``max_queue``: requests waiting beyond it get 503; ``max_batch``: requests per
    batch; ``batch_wait_s``: how long the worker waits to fill a batch; ``template``: ``chat`` (Kimi's chat
    layout, tools) or ``plain`` (the toy world's question format; answers end at a newline or ``<|eos|>``)."""
    if template not in ("chat", "plain"):
        raise ValueError(f"template must be 'chat' or 'plain', got {template!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
    for name, v in (("max_queue", max_queue), ("max_batch", max_batch), ("default_max_tokens", default_max_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(batch_wait_s, (int, float)) or batch_wait_s < 0:
        raise ValueError(f"batch_wait_s must be a number >= 0, got {batch_wait_s!r}")
    limits = limits or Limits()
    tok = Tokenizer()
    batcher = Batcher(engine, max_queue=max_queue, max_batch=max_batch, wait_s=float(batch_wait_s))
    created = int(time.time())
    stops = (tok.im_end_id, tok.eos_id) if template == "chat" else (tok.eos_id, ord("\n"))
    tool_markers = (tok.token_id(FMT.section_begin), tok.token_id(FMT.call_begin))
    app = FastAPI(title="k25mini serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.engine, app.state.limits = batcher, engine, limits
    app.state.counts = {"requests": 0, "answered": 0}

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(APIError(e.status_code, str(e.detail), None, code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(APIError(400, f"invalid request: {e.errors()[:1]}", None, "invalid_value"))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": {"message": f"internal error: {type(e).__name__}", "type": "server_error",
                                       "param": None, "code": "internal_error"}}, status_code=500)

    def model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "k25mini"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queued": batcher.q.qsize(), **app.state.counts}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise APIError(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return model_card()

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise APIError(413, f"the request body is larger than {limits.max_body_bytes} bytes", None,
                           "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise APIError(413, f"the request body is larger than {limits.max_body_bytes} bytes", None,
                               "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        app.state.counts["requests"] += 1
        raw = await read_body(request)

        def prepare():  # JSON, image decoding and the template off the event loop: a large image takes a while
            req = parse_chat_request(loads_body(raw, limits), limits, {model_id}, engine.patch_size)
            return req, render_prompt(req, tok, engine.counts, engine.chunk_size, template)

        req, prompt = await asyncio.to_thread(prepare)
        n_prompt = len(prompt.ids) + len(prompt.forced)
        room = engine.max_positions - n_prompt
        cap = limits.max_prompt_tokens
        if cap is not None and len(prompt.ids) > cap:
            raise APIError(413, f"the prompt is {len(prompt.ids)} tokens, more than the limit of {cap}", "messages",
                           "context_length_exceeded")
        if room < 1:
            raise APIError(400, f"the prompt is {n_prompt} tokens; the model's context is {engine.max_positions}",
                           "messages", "context_length_exceeded")
        if req.max_tokens is not None and req.max_tokens > room:
            raise APIError(400, f"max_tokens {req.max_tokens} + the prompt's {n_prompt} tokens exceed the model's "
                           f"context of {engine.max_positions}", "max_tokens", "context_length_exceeded")
        max_tokens = req.max_tokens or min(default_max_tokens, room)
        ban = tool_markers if req.tool_choice == "none" else ()
        params = Params(req.temperature, req.top_p, max_tokens, req.n, stops, ban)
        job = GenJob(prompt, params, req.seed)
        if req.stream:
            loop, tokens = asyncio.get_running_loop(), asyncio.Queue()
            job.sink = lambda c, t: loop.call_soon_threadsafe(tokens.put_nowait, (c, t))
        try:
            fut = batcher.submit(job)
        except QueueFull:
            raise APIError(503, "the server is busy: too many requests are waiting; retry later", None,
                           "server_overloaded", type="server_error", headers={"Retry-After": "1"}) from None
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def finish(groups: list[Completion]) -> tuple[list[dict[str, Any]], dict[str, int]]:
            choices = [_choice(tok, req, prompt.forced, c, i) for i, c in enumerate(groups)]
            n_out = sum(len(prompt.forced) + len(c.tokens) for c in groups)
            app.state.counts["answered"] += 1
            return choices, {"prompt_tokens": len(prompt.ids), "completion_tokens": n_out,
                             "total_tokens": len(prompt.ids) + n_out}

        if req.stream:
            fut.add_done_callback(lambda f: loop.call_soon_threadsafe(tokens.put_nowait, None))
            return StreamingResponse(_sse(rid, now, model_id, req, prompt.forced, tok, tokens, fut, finish),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            groups: list[Completion] = await asyncio.wrap_future(fut)
        except ValueError as e:  # the engine refused an input the checks let through
            raise APIError(400, f"the request could not be run: {e}", None, "invalid_value") from None
        choices, usage = finish(groups)
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_id, "choices": choices,
                "usage": usage, "system_fingerprint": None}

    return app


def _streamable(tok: Tokenizer, ids: list[int], stops: list[str]) -> str:
    """The part of a choice's text that is already final: the text before the first tool-call marker and before
    any ``<|`` (a marker spelled out in bytes), less a cut UTF-8 character and less an ending that could still
    grow into a stop string (and cut at a stop string already there)."""
    ids = _visible(tok, ids)
    first = next((i for i, t in enumerate(ids) if t >= 256), len(ids))
    text = tok.decode(ids[:first])
    text = text[: text.find("<|")] if "<|" in text else text
    text, cut = _cut_at_stop(text, stops)
    if not cut:
        hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        text = text[: len(text) - hold]
    return text.rstrip("\ufffd")

def _sse(rid: str, created: int, model: str, req: ChatRequest, forced: list[int], tok: Tokenizer,
         tokens: asyncio.Queue, fut: Any, finish: Any) -> AsyncIterator[bytes]:
    """Server-sent events: a role delta per choice, content deltas as tokens are drawn (only text that is final,
    see :func:`_streamable`), then per choice the rest of its content, one tool-call delta per call (id and name,
    then the arguments) and its finish reason; usage (with ``stream_options.include_usage``) and ``[DONE]``."""

    def event(choice_deltas: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choice_deltas, **(extra or {})}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    def delta(i: int, d: dict[str, Any], reason: str | None = None) -> bytes:
        return event([{"index": i, "delta": d, "finish_reason": reason}])

    async def gen() -> AsyncIterator[bytes]:
        ids = [list(forced) for _ in range(req.n)]
        sent = [""] * req.n
        for i in range(req.n):
            yield delta(i, {"role": "assistant", "content": ""})
        while (item := await tokens.get()) is not None:
            c, t = item
            ids[c].append(t)
            now = _streamable(tok, ids[c], req.stop)
            if len(now) > len(sent[c]):
                yield delta(c, {"content": now[len(sent[c]):]})
                sent[c] = now
        try:
            choices, usage = finish(fut.result())
        except Exception as e:  # noqa: BLE001 - the status line is already sent: report in the stream
            err = {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error", "param": None,
                   "code": "internal_error"}
            yield f"data: {json.dumps({'error': err})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            return
        for ch in choices:
            i, msg = ch["index"], ch["message"]
            rest = (msg["content"] or "")[len(sent[i]):] if (msg["content"] or "").startswith(sent[i]) else ""
            if rest:
                yield delta(i, {"content": rest})
            for j, call in enumerate(msg.get("tool_calls", [])):
                head = {"index": j, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                yield delta(i, {"tool_calls": [head]})
                args = call["function"]["arguments"]
                if args:
                    yield delta(i, {"tool_calls": [{"index": j, "function": {"arguments": args}}]})
            yield delta(i, {}, ch["finish_reason"])
        if req.include_usage:
            yield event([], {"usage": usage})
        yield b"data: [DONE]\n\n"

    return gen()


class ServerThread:
    """uvicorn in a background thread on ``host:port`` (port 0: a free one); ``url`` is the ``/v1`` base.
    For tests, notebooks and the load benchmark; ``python -m k25mini.serve`` runs uvicorn in the foreground."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port, self.app = host, port, app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    timeout_keep_alive=30, backlog=512))
        self.thread = threading.Thread(target=self.server.run, name="k25mini-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.app.state.batcher.close()
