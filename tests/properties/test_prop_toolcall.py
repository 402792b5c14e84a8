"""Properties of the tool-call parser (k25mini.agents.toolcall.parse_tool_calls).

Invariants checked:

* arbitrary text, including random interleavings of the five marker tokens, never raises; every
  ``<|tool_call_begin|>`` yields exactly one parsed call or one error observation (plus at most one error for
  stray markers outside a call), every error is a non-empty string starting with "malformed tool call" (a
  clear observation for the policy), every call has an identifier name and a dict of arguments, and no marker
  survives in the free-text content;
* text without markers is pure content (no calls, no errors);
* format -> parse is the identity on random calls (identifier names, JSON-object arguments whose strings may
  contain the marker texts), with free text before and after kept as content;
* hand-made malformed calls and non-text input give an error observation, never an exception.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from k25mini.agents.toolcall import DEFAULT_FORMAT, ToolCall, format_tool_calls, parse_tool_calls

MARKERS = DEFAULT_FORMAT.specials()
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# text that cannot contain a marker (no "<|"), for content that must survive untouched
plain = st.text(max_size=20).filter(lambda s: "<|" not in s and "|>" not in s)
chunks = st.one_of(st.text(max_size=12), st.sampled_from(MARKERS), st.sampled_from(
    ["search", "functions.browse:0", '{"q": 1}', "{", "[1]", " ", "1abc", '{"a": "<|tool_call_end|>"}']))
model_text = st.lists(chunks, max_size=12).map("".join)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
# argument strings may hold marker text (a model quoting the protocol, or code that prints it)
json_str = st.lists(st.text(max_size=6) | st.sampled_from(MARKERS) | st.just("\\"), max_size=4).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | json_str,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(json_str, kids, max_size=3),
    max_leaves=8,
)
calls = st.lists(st.builds(ToolCall, names, st.dictionaries(json_str, json_values, max_size=4)), max_size=4)


@given(model_text)
# found by review, kept as regressions: stripping one stray marker used to join its neighbours into a new one
@example("a <|tool_call_<|tool_call_argument_begin|>end|> b")
@example("a <|tool_call_<|tool_calls_section_end|>begin|> b")
def test_arbitrary_text_gives_calls_or_clear_errors(text):
    out = parse_tool_calls(text)
    assert isinstance(out.calls, list) and isinstance(out.errors, list) and isinstance(out.content, str)
    n_begin = text.count(DEFAULT_FORMAT.call_begin)
    stray = sum(e.startswith("malformed tool call: stray") for e in out.errors)
    assert stray <= 1
    assert len(out.calls) + len(out.errors) - stray == n_begin, (text, out)
    for c in out.calls:
        assert IDENT.fullmatch(c.name) and isinstance(c.args, dict)
    for e in out.errors:
        assert isinstance(e, str) and e.startswith("malformed tool call")
    for m in MARKERS:
        assert m not in out.content


@given(plain)
def test_text_without_markers_is_pure_content(text):
    out = parse_tool_calls(text)
    assert out.calls == [] and out.errors == [] and out.content == text.strip()


@given(calls, plain, plain, st.booleans())
# regression: a marker inside a JSON string argument used to end the call early (now written as \u003c|)
@example([ToolCall("search", {"q": "x<|tool_call_end|>y"})], "", "", True)
def test_format_then_parse_is_the_identity(cs, before, after, section):
    if section:
        body = format_tool_calls(cs)
    else:
        body = "".join(format_tool_calls([c])[len(DEFAULT_FORMAT.section_begin):-len(DEFAULT_FORMAT.section_end)]
                       for c in cs)
    out = parse_tool_calls(before + body + after)
    assert out.errors == []
    assert len(out.calls) == len(cs)
    assert [c.to_dict() for c in out.calls] == [c.to_dict() for c in cs]
    assert out.content == (before + after).strip()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("<|tool_call_begin|>search{\"q\": 1}", "missing <|tool_call_end|>"),
        ("<|tool_call_begin|>search<|tool_call_argument_begin|>{bad json}<|tool_call_end|>", "not valid JSON"),
        ("<|tool_call_begin|>search<|tool_call_argument_begin|>[1, 2]<|tool_call_end|>", "must be a JSON object"),
        ("<|tool_call_begin|>1abc<|tool_call_argument_begin|>{}<|tool_call_end|>", "bad tool name"),
        ("<|tool_call_begin|>{}<|tool_call_end|>", "no tool name"),
        ("hello <|tool_call_end|> world", "stray"),
        ("<|tool_call_begin|>a<|tool_call_begin|>b{}<|tool_call_end|>", "missing <|tool_call_end|>"),
        ("<|tool_call_begin|>search<|tool_call_argument_begin|>\"text\"<|tool_call_end|>", "JSON object"),
    ],
)
def test_malformed_calls_become_error_observations(text, needle):
    out = parse_tool_calls(text)
    assert len(out.errors) >= 1
    assert any(needle in e for e in out.errors), out.errors


@pytest.mark.parametrize("bad", [None, 5, b"<|tool_call_begin|>", ["x"], {"name": "search"}],
                         ids=lambda v: type(v).__name__)
def test_non_text_policy_output_is_an_error_observation(bad):
    out = parse_tool_calls(bad)
    assert out.calls == [] and out.content == ""
    assert len(out.errors) == 1 and "must be text" in out.errors[0]
