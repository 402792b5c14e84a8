"""The unmodified ``openai`` client against ``k25mini serve``: models, chat, images, video frames, n, seed,
stop, streaming, tools (named, none, parallel calls and tool results), on a smoke-scale checkpoint over loopback."""

from __future__ import annotations

import concurrent.futures as cf
import json

import pytest
from openai import OpenAI

from tests.serve.conftest import MODEL, png_url

HI = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]
WEATHER = {"type": "function", "function": {"name": "weather", "description": "weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_text_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=12, temperature=0.8)
    assert r.object == "chat.completion" and r.model == MODEL and len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_multi_turn_roles(client):
    msgs = HI + [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
    assert r.choices[0].message.role == "assistant"


def test_seed_reproducible_and_n(client):
    kw = dict(model=MODEL, messages=HI, max_tokens=10, temperature=1.0, seed=123, n=3)
    a = client.chat.completions.create(**kw)
    # the same request again, this time alongside unseeded traffic: a seeded request runs in its own batch
    with cf.ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(client.chat.completions.create, model=MODEL, messages=HI, max_tokens=10)
                 for _ in range(3)]
        b = client.chat.completions.create(**kw)
        [f.result() for f in noise]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert 3 <= a.usage.completion_tokens <= 30  # usage counts the tokens of every choice


def test_greedy_deterministic(client):
    kw = dict(model=MODEL, messages=HI, max_tokens=8, temperature=0)
    assert client.chat.completions.create(**kw).choices[0].message.content == \
        client.chat.completions.create(**kw).choices[0].message.content


def test_stop_string(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=16, temperature=0, seed=1)
    text = r.choices[0].message.content
    if len(text) < 3:
        pytest.skip("the random model stopped too early to test a stop string")
    r2 = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=16, temperature=0, seed=1,
                                        stop=[text[2:4]])
    assert r2.choices[0].message.content == text[: text.find(text[2:4])]
    assert r2.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=16, temperature=0, seed=1,
                                              stop=[text[2:4]], stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == r2.choices[0].message.content


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_parts(client, fmt):
    content = [{"type": "text", "text": "What is in the picture?"},
               {"type": "image_url", "image_url": {"url": png_url(40, 56, fmt=fmt)}}]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=6)
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content[:1]}],
                                           max_tokens=6)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens  # the image's vision tokens are in the prompt


def test_video_frames(client):
    frames = [png_url(32, 32, seed=s) for s in range(5)]  # 5 frames: chunks of 4 + 1
    content = [{"type": "video", "video": {"frames": frames}}, {"type": "text", "text": "What moves?"}]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4)
    assert r.choices[0].message.role == "assistant"


def test_streaming_matches_and_ends_with_done(client, model_server):
    kw = dict(model=MODEL, messages=HI, max_tokens=24, temperature=0.9, seed=7, n=2)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    for i in range(2):  # streamed token by token, the same draws as the non-streamed request
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == i]
        assert "".join(c.delta.content or "" for c in mine) == full.choices[i].message.content
        assert mine[-1].finish_reason == full.choices[i].finish_reason
        assert sum(bool(c.delta.content) for c in mine) >= min(2, len(full.choices[i].message.content))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    import httpx  # the raw wire format: SSE "data:" lines, then [DONE]

    raw = httpx.post(model_server.url + "/chat/completions", json={**kw, "stream": True}, timeout=60)
    lines = [ln for ln in raw.text.split("\n") if ln]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"


def test_named_tool_choice_on_the_checkpoint(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], max_tokens=8,
                                       tool_choice={"type": "function", "function": {"name": "weather"}})
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1 and calls[0].function.name == "weather" and calls[0].type == "function"
    assert isinstance(calls[0].function.arguments, str) and calls[0].id.startswith("call_")


def test_tool_choice_none_never_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None


def test_parallel_tool_calls_and_tool_results(scripted_server):
    c = OpenAI(base_url=scripted_server.url, api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    r = c.chat.completions.create(model="scripted", messages=msgs, tools=[WEATHER], tool_choice="auto")
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and m.content == "Let me check."
    assert [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls] == \
        [("weather", {"city": "Paris"}), ("weather", {"city": "Oslo"})]
    assert len({t.id for t in m.tool_calls}) == 2
    msgs += [m.model_dump(exclude_none=True)]
    msgs += [{"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "sunny"},
             {"role": "tool", "tool_call_id": m.tool_calls[1].id, "content": "snowy"}]
    r2 = c.chat.completions.create(model="scripted", messages=msgs, tools=[WEATHER])
    assert r2.choices[0].message.content == "It is sunny and snowy." and r2.choices[0].finish_reason == "stop"
    one = c.chat.completions.create(model="scripted", messages=msgs[:1], tools=[WEATHER], parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1


def test_streamed_tool_calls(scripted_server):
    c = OpenAI(base_url=scripted_server.url, api_key="unused", max_retries=0)
    calls: dict[int, dict] = {}
    for ch in c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                        tools=[WEATHER], stream=True):
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
            slot["name"] += d.function.name or "" if d.function else ""
            slot["arguments"] += (d.function.arguments or "") if d.function else ""
    assert [(v["name"], json.loads(v["arguments"])) for _, v in sorted(calls.items())] == \
        [("weather", {"city": "Paris"}), ("weather", {"city": "Oslo"})]
