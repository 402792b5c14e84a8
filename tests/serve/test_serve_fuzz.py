"""Random request bodies (hypothesis): every answer is 200 or an OpenAI-style 4xx JSON error, never a 5xx.

Field values are drawn from a mix of plausible and hostile JSON (wrong types, out-of-range numbers, nested junk),
for the known fields and for a few unknown ones, against a server with a scripted stand-in model (the checks are
the same as with a checkpoint; generation is instant)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from k25mini.serve import ScriptedEngine, ServerThread, create_app
from tests.serve.conftest import png_url

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
junk = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                    max_leaves=12)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), junk)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(
        st.fixed_dictionaries({"url": st.sampled_from([png_url(16, 16), png_url(4, 4), "data:image/png;base64,xx",
                                                       "http://x/y.png"])}), junk)}),
    junk,
)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "robot", ""]),
                           "content": st.one_of(st.text(max_size=30), st.lists(part, max_size=3), junk)},
                          optional={"tool_call_id": junk, "tool_calls": junk, "name": junk}),
    junk,
)
body = st.fixed_dictionaries(
    {"model": st.one_of(st.just("s"), junk), "messages": st.one_of(st.lists(message, min_size=1, max_size=3), junk)},
    optional={"temperature": st.one_of(st.floats(-1, 3), junk), "top_p": st.one_of(st.floats(-1, 2), junk),
              "max_tokens": st.one_of(st.integers(-3, 600), junk), "n": st.one_of(st.integers(-1, 10), junk),
              "stop": junk, "seed": junk, "stream": st.one_of(st.booleans(), junk), "tools": junk,
              "tool_choice": junk, "stream_options": junk, "parallel_tool_calls": junk, "logprobs": junk,
              "response_format": junk, "bogus": junk},
)


@pytest.fixture(scope="module")
def url():
    with ServerThread(create_app(ScriptedEngine(lambda p, i: "fine<|im_end|>"), "s")) as srv:
        yield srv.url


@given(b=body)
def test_random_bodies_never_get_a_5xx(url, b):
    r = httpx.post(url + "/chat/completions", json=b, timeout=30)
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:300])
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
