"""Text tool-call format: round trips, Kimi-style variants, and malformed text that must not raise."""

from __future__ import annotations

import pytest

from k25mini.agents import ToolCall, ToolCallFormat, format_tool_call, format_tool_calls, parse_tool_calls

B, A, E = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def test_round_trip_several_calls_with_unicode_and_nesting():
    calls = [ToolCall("search", {"query": "rot → blau", "k": 3}),
             ToolCall("assign_task", {"agent": "w", "prompt": "a {b} \"c\"", "meta": {"x": [1, 2]}})]
    parsed = parse_tool_calls("thinking...\n" + format_tool_calls(calls))
    assert [c.to_dict() for c in parsed.calls] == [c.to_dict() for c in calls]
    assert parsed.errors == [] and parsed.content == "thinking..."


@pytest.mark.parametrize(
    "text, name, args",
    [
        (f"{B}functions.search:0{A}{{\"query\": \"q\"}}{E}", "search", {"query": "q"}),
        (f"{B}browse{{\"page_id\": \"p1\"}}{E}", "browse", {"page_id": "p1"}),
        (f"{B} finish {A} {{\"answer\": \"x\"}} {E}", "finish", {"answer": "x"}),
        (f"{B}finish{E}", "finish", {}),
    ],
)
def test_accepted_variants(text, name, args):
    p = parse_tool_calls(text)
    assert p.errors == [] and len(p.calls) == 1
    assert p.calls[0].name == name and p.calls[0].args == args


@pytest.mark.parametrize(
    "text, fragment",
    [
        (f"{B}search{A}{{\"query\": \"q\"", "missing"),
        (f"{B}search{A}{{query: q}}{E}", "not valid JSON"),
        (f"{B}search{A}[1, 2]{E}", "JSON object"),
        (f"{B}9bad{A}{{}}{E}", "tool name"),
        (f"{B}{A}{{}}{E}", "tool name"),
        (f"hello {E} world", "stray"),
    ],
)
def test_malformed_calls_become_errors(text, fragment):
    p = parse_tool_calls(text)
    assert p.calls == []
    assert len(p.errors) == 1 and fragment in p.errors[0]


def test_a_broken_call_does_not_hide_the_next_good_one():
    text = f"{B}search{A}{{\"query\": \"q\"" + format_tool_call("finish", {"answer": "ok"})
    p = parse_tool_calls(text)
    assert [c.name for c in p.calls] == ["finish"] and len(p.errors) == 1


def test_no_call_and_non_text():
    p = parse_tool_calls("just an answer")
    assert p.calls == [] and p.errors == [] and p.content == "just an answer"
    assert parse_tool_calls(None).errors  # type: ignore[arg-type]


def test_custom_format_markers():
    fmt = ToolCallFormat(section_begin="<s>", section_end="</s>", call_begin="<call>", arg_begin="<args>",
                         call_end="</call>")
    text = format_tool_calls([ToolCall("finish", {"answer": "1"})], fmt)
    assert text.startswith("<s><call>finish<args>")
    assert parse_tool_calls(text, fmt).calls[0].args == {"answer": "1"}
    assert len(fmt.specials()) == 5


def test_render_messages_uses_the_chat_specials():
    from k25mini.agents import Message, render_messages

    text = render_messages([Message("system", "S"), Message("user", "T"), Message("tool", "R", tool="search")])
    assert text == ("<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>T<|im_end|>"
                    "<|im_system|>tool<|im_middle|><|tool_result_begin|>R<|tool_result_end|><|im_end|>"
                    "<|im_assistant|>assistant<|im_middle|>")


def test_markers_are_tokenizer_specials_when_the_tokenizer_exists():
    import k25mini.data.tokenizer as tok  # our own module: a broken import must fail here, not skip
    from k25mini.agents import DEFAULT_FORMAT

    for marker in DEFAULT_FORMAT.specials():
        assert marker in tok.SPECIAL_TOKENS
