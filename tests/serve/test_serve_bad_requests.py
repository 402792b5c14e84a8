"""Bad input gets an OpenAI-style JSON error with the right 4xx, never a 5xx, and the server keeps serving.
One table, one row per kind of mistake; a full queue answers 503 with Retry-After."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest

from k25mini.serve import Limits, ScriptedEngine, ServerThread, create_app
from tests.serve.conftest import MODEL, png_url

U = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
ASSIST_CALL = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def ok(**kw):
    return {"model": MODEL, "messages": U, "max_tokens": 2, **kw}


def user(content):
    return ok(messages=[{"role": "user", "content": content}])


def img(url):
    return user([{"type": "image_url", "image_url": {"url": url}}])


def b64(raw: bytes, mime: str = "png") -> str:
    return f"data:image/{mime};base64," + base64.b64encode(raw).decode()


def _png_big() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((1000, 1100, 3), np.uint8)).save(buf, "PNG")  # 1.1 Mpixel, a few kB
    return b64(buf.getvalue())


# (name, body: dict | str | bytes, status, code)
CASES = [
    ("malformed_json", b'{"model": ', 400, "invalid_json"),
    ("empty_body", b"", 400, "invalid_json"),
    ("not_utf8", b"\xff\xfe{}", 400, "invalid_json"),
    ("body_is_list", [1, 2], 400, "invalid_json"),
    ("deep_nesting", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ("unknown_model", ok(model="gpt-9"), 404, "model_not_found"),
    ("missing_model", {"messages": U}, 400, "invalid_type"),
    ("model_not_string", ok(model=3), 400, "invalid_type"),
    ("missing_messages", {"model": MODEL}, 400, "invalid_type"),
    ("empty_messages", ok(messages=[]), 400, "invalid_type"),
    ("messages_not_list", ok(messages="hi"), 400, "invalid_type"),
    ("message_not_object", ok(messages=["hi"]), 400, "invalid_type"),
    ("unknown_role", ok(messages=[{"role": "wizard", "content": "x"}]), 400, "invalid_role"),
    ("missing_role", ok(messages=[{"content": "x"}]), 400, "invalid_role"),
    ("missing_content", ok(messages=[{"role": "user"}]), 400, "missing_content"),
    ("content_int", user(5), 400, "invalid_type"),
    ("part_without_type", user([{"text": "x"}]), 400, "invalid_type"),
    ("part_unknown_type", user([{"type": "audio", "audio": "x"}]), 400, "invalid_content_part"),
    ("text_part_not_string", user([{"type": "text", "text": 1}]), 400, "invalid_type"),
    ("image_url_missing", user([{"type": "image_url"}]), 400, "invalid_type"),
    ("image_remote_url", img("https://example.com/cat.png"), 400, "unsupported_image_url"),
    ("image_not_data_url", img("cat.png"), 400, "invalid_image_url"),
    ("image_gif_mime", img("data:image/gif;base64,R0lGODlhAQABAAAAACw="), 400, "invalid_image_url"),
    ("image_bad_base64", img("data:image/png;base64,!!!notbase64!!!"), 400, "invalid_base64"),
    ("image_bad_bytes", img(b64(b"definitely not a png file")), 400, "invalid_image"),
    ("image_truncated_png", img(b64(base64.b64decode(png_url().split(",")[1])[:60])), 400, "invalid_image"),
    ("image_smaller_than_patch", img(png_url(4, 4)), 400, "image_too_small"),
    ("image_too_many_pixels", img(_png_big()), 413, "image_too_large"),
    ("image_too_many_bytes", img(b64(bytes(5 * 2**20))), 413, "image_too_large"),
    ("too_many_images", user([{"type": "image_url", "image_url": {"url": png_url(16, 16)}}] * 9), 413,
     "too_many_images"),
    ("image_in_system", ok(messages=[{"role": "system", "content": [{"type": "image_url",
                                                                      "image_url": {"url": png_url()}}]}] + U),
     400, "invalid_content_part"),
    ("video_frames_not_list", user([{"type": "video", "video": {"frames": "x"}}]), 400, "invalid_type"),
    ("video_frames_mixed_sizes", user([{"type": "video", "video": {"frames": [png_url(16, 16), png_url(24, 16)]}}]),
     400, "invalid_video"),
    ("video_too_many_frames", user([{"type": "video", "video": {"frames": [png_url(16, 16)] * 17}}]), 413,
     "too_many_frames"),
    ("temperature_too_high", ok(temperature=3), 400, "invalid_value"),
    ("temperature_string", ok(temperature="hot"), 400, "invalid_value"),
    ("temperature_nan", b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
     % MODEL.encode(), 400, "invalid_value"),
    ("top_p_zero", ok(top_p=0), 400, "invalid_value"),
    ("max_tokens_zero", ok(max_tokens=0), 400, "invalid_value"),
    ("max_tokens_negative", ok(max_tokens=-5), 400, "invalid_value"),
    ("max_tokens_float", ok(max_tokens=1.5), 400, "invalid_value"),
    ("max_tokens_over_limit", ok(max_tokens=100_000), 400, "invalid_value"),
    ("max_completion_tokens_zero", {"model": MODEL, "messages": U, "max_completion_tokens": 0}, 400,
     "invalid_value"),
    ("n_zero", ok(n=0), 400, "invalid_value"),
    ("n_too_many", ok(n=100), 400, "invalid_value"),
    ("stop_too_many", ok(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
    ("stop_empty_string", ok(stop=""), 400, "invalid_value"),
    ("seed_string", ok(seed="abc"), 400, "invalid_value"),
    ("stream_not_bool", ok(stream="yes"), 400, "invalid_type"),
    ("stream_options_without_stream", ok(stream_options={"include_usage": True}), 400, "invalid_value"),
    ("unknown_parameter", ok(foo=1), 400, "unsupported_parameter"),
    ("logprobs", ok(logprobs=True), 400, "unsupported_parameter"),
    ("presence_penalty", ok(presence_penalty=0.5), 400, "unsupported_parameter"),
    ("logit_bias", ok(logit_bias={"65": 10}), 400, "unsupported_parameter"),
    ("response_format_json", ok(response_format={"type": "json_object"}), 400, "unsupported_parameter"),
    ("parallel_tool_calls_not_bool", ok(parallel_tool_calls="yes"), 400, "invalid_type"),
    ("user_not_string", ok(user=5), 400, "invalid_type"),
    ("name_not_string", ok(messages=[{"role": "user", "content": "x", "name": 5}]), 400, "invalid_type"),
    ("tools_not_list", ok(tools={"type": "function"}), 400, "invalid_type"),
    ("tool_without_function", ok(tools=[{"type": "function"}]), 400, "invalid_tool"),
    ("tool_bad_name", ok(tools=[{"type": "function", "function": {"name": "my tool!"}}]), 400, "invalid_tool"),
    ("tool_params_not_object", ok(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "array"}}}]), 400, "invalid_tool"),
    ("tool_required_unknown", ok(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}, "required": ["x"]}}}]), 400, "invalid_tool"),
    ("tool_duplicate_name", ok(tools=[TOOL, TOOL]), 400, "invalid_tool"),
    ("tool_choice_unknown_string", ok(tools=[TOOL], tool_choice="sometimes"), 400, "invalid_value"),
    ("tool_choice_unknown_function", ok(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}),
     400, "invalid_value"),
    ("tool_choice_required_without_tools", ok(tool_choice="required"), 400, "invalid_value"),
    ("tool_message_without_id", ok(messages=U + [ASSIST_CALL, {"role": "tool", "content": "r"}]), 400,
     "invalid_value"),
    ("tool_message_unknown_id", ok(messages=U + [ASSIST_CALL, {"role": "tool", "tool_call_id": "zz", "content": "r"}]),
     400, "unknown_tool_call_id"),
    ("tool_message_without_call", ok(messages=U + [{"role": "tool", "tool_call_id": "c1", "content": "r"}]), 400,
     "unknown_tool_call_id"),
    ("tool_call_arguments_not_string", ok(messages=U + [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]}]), 400, "invalid_tool_call"),
    ("tool_call_missing_id", ok(messages=U + [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), 400, "invalid_tool_call"),
    ("assistant_empty", ok(messages=U + [{"role": "assistant"}]), 400, "missing_content"),
    ("tool_calls_on_user", ok(messages=[{"role": "user", "content": "x", "tool_calls": []}]), 400, "invalid_value"),
    ("text_over_char_limit", user("x" * 40_000), 413, "context_length_exceeded"),
    ("prompt_over_context", user("x" * 3000), 400, "context_length_exceeded"),
    ("max_tokens_past_context", {**user("x" * 900), "max_tokens": 500}, 400, "context_length_exceeded"),
    ("lone_surrogate", b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL.encode(),
     400, "invalid_value"),
    ("too_many_messages", ok(messages=U * 300), 413, "too_many_messages"),
    ("body_over_limit", b'{"pad": "' + b"x" * (16 * 2**20 + 10) + b'"}', 413, "body_too_large"),
]


def test_the_table_is_large():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def http(model_server):
    with httpx.Client(base_url=model_server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("name,body,status,code", CASES, ids=[c[0] for c in CASES])
def test_bad_request(http, name, body, status, code):
    if isinstance(body, bytes):
        r = http.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    else:
        r = http.post("/chat/completions", json=body)
    assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"


def test_http_level_errors_are_json(http):
    r = http.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.delete("/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = http.get("/models/gpt-9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_still_serving_after_the_table(http):
    for _name, body, _, _ in CASES[:5]:  # a burst of garbage, then a good request
        http.post("/chat/completions", content=body if isinstance(body, bytes) else json.dumps(body))
    r = http.post("/chat/completions", json=ok())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert http.get("/models").status_code == 200


def test_full_queue_answers_503_with_retry_after():
    gate = threading.Event()
    app = create_app(ScriptedEngine(lambda p, i: "ok<|im_end|>", gate=gate), "s", max_queue=2, max_batch=1,
                     batch_wait_s=0.0, limits=Limits())
    with ServerThread(app) as srv:
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def one():
            r = httpx.post(srv.url + "/chat/completions", json={"model": "s", "messages": U}, timeout=60)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # the worker holds the first job (gate closed); two wait; the rest are refused
        deadline = time.monotonic() + 10
        while sum(r.status_code == 503 for r in results) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        gate.set()
        for t in threads:
            t.join(30)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 200, 503, 503, 503]
    busy = [r for r in results if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "server_overloaded" for r in busy)
