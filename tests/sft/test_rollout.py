"""The tool-use rollout loop (chapter 06): calls go to the sandboxed tool, results come back into the context,
stats are counted right; with scripted "model" turns so every branch is exercised."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from k25mini.config import preset
from k25mini.data.tokenizer import Tokenizer
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.pretrain.docs import prompt_ids
from k25mini.pretrain.evaluate import NEWLINE, greedy_answers, greedy_generate
from k25mini.sft import rollout
from k25mini.sft.rollout import episode_stats, oracle_answers, solve_with_tool
from k25mini.sft.trajectories import call_text, result_text
from k25mini.world import World, make_eval_suite, score
from k25mini.world.rng import rng_for
from tests.tools.conftest import strong_mode_or_skip


@dataclass
class Obs:
    status: str
    text: str
    sandbox: str = "fake-sandbox"

    @property
    def ok(self):
        return self.status == "ok"


class FakeTool:
    """Records episodes and calls; prints a canned output."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.calls, self.episodes, self.open = [], [], False

    def start(self, image=None, frames=None, setup=None):
        assert not self.open, "an episode was left open"
        self.episodes.append({"image": image, "frames": frames, "setup": setup})
        self.open = True
        return self

    def run(self, code):
        assert self.open
        self.calls.append(code)
        return self.outputs.pop(0)

    def close(self):
        self.open = False


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25ForConditionalGeneration(preset("nano"))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def items():
    w = World(0, scale="cpu")
    out: list = []
    for i in range(50):  # three chart items whose prompts differ (the scripted generator tells them apart by prompt)
        it = w.sample("chart", "eval", rng_for(0, "test-rollout", i))
        if all(it.prompt != o.prompt for o in out):
            out.append(it)
        if len(out) == 3:
            return out
    raise AssertionError("no three distinct chart prompts")


def test_greedy_generate_matches_greedy_answers(model, tok, items):
    prompts = [prompt_ids(it, tok, model.media_token_counts) for it in items]
    outs = greedy_generate(model, prompts, [it.images for it in items], max_new_tokens=6, batch_size=2)
    ans = greedy_answers(model, tok, items, max_new_tokens=6)
    assert [tok.decode(o, skip_special=True).strip() for o in outs] == ans
    first = outs[0][0] if outs[0] else None
    if first is not None:  # a kept stop token ends the row and stays in the output
        kept = greedy_generate(model, prompts[:1], [items[0].images], 6, stops={first: True})
        assert kept == [[first]]
    with pytest.raises(ValueError, match="one list per prompt"):
        greedy_generate(model, prompts, [[]], 4)
    with pytest.raises(ValueError, match="empty token list"):
        greedy_generate(model, [[]], None, 4)


def _scripted(monkeypatch, tok, turns):
    """Replace the model's turns: ``turns[i]`` is the list of texts item i emits, one per turn."""
    seen = []

    def fake_generate(model, prompts, media, max_new_tokens, stops, batch_size):
        seen.append([tok.decode(p, skip_special=False) for p in prompts])
        out = []
        for p in prompts:
            i = next(k for k, t in enumerate(turns) if t and p[: len(base[k])] == base[k])
            out.append(tok.encode(turns[i].pop(0)))
        return out

    base = []
    monkeypatch.setattr(rollout, "greedy_generate", fake_generate)
    return base, seen


def test_solve_with_tool_loop(monkeypatch, model, tok, items):
    code = "print(3)"
    turns = [[call_text(code), "3"],  # a call, then the answer
             ["7"],  # a direct answer
             ["<|tool_call_begin|>python<|tool_call_argument_begin|>{bad<|tool_call_end|>", "9"]]  # invalid call
    base, seen = _scripted(monkeypatch, tok, turns)
    base.extend(prompt_ids(it, tok, model.media_token_counts) for it in items)
    tool = FakeTool([Obs("ok", "3\n")])
    eps = solve_with_tool(model, tok, items, tool)
    assert [e.answer for e in eps] == ["3", "7", "9"]
    assert tool.calls == [code] and tool.episodes[0]["image"] is items[0].images[0]
    assert "Colour(" in tool.episodes[0]["setup"] and not tool.open
    # the second turn's context ends with the call and its result
    ctx = seen[1][0]
    assert ctx.endswith(call_text(code) + result_text("3"))
    assert "Error: arguments are not JSON" in seen[1][1]
    assert (eps[0].calls, eps[0].valid_calls, eps[0].code_errors, eps[0].turns, eps[0].sandbox) == (1, 1, 0, 2,
                                                                                                      "fake-sandbox")
    assert (eps[2].calls, eps[2].valid_calls, eps[2].statuses) == (1, 0, ["invalid"])
    st = episode_stats(eps)
    assert st["tool_call_rate"] == pytest.approx(2 / 3) and st["valid_call_rate"] == 0.5
    assert st["code_error_rate"] == 0.0 and st["steps_per_answer"] == pytest.approx(5 / 3)


def test_system_turn_prefixes_every_prompt(monkeypatch, model, tok, items):
    from k25mini.sft.trajectories import TOOLS_SYSTEM, with_system

    turns = [["1"], ["2"], ["3"]]
    base, seen = _scripted(monkeypatch, tok, turns)
    base.extend(prompt_ids(with_system(it, TOOLS_SYSTEM), tok, model.media_token_counts) for it in items)
    eps = solve_with_tool(model, tok, items, FakeTool([]), system=TOOLS_SYSTEM)
    assert [e.answer for e in eps] == ["1", "2", "3"]
    assert all(p.startswith("<|bos|>" + TOOLS_SYSTEM + "<|media_begin|>") for p in seen[0])


def test_calls_are_capped_and_errors_counted(monkeypatch, model, tok, items):
    turns = [["x" + call_text("1/0")], [call_text("print(1)"), call_text("print(2)"), "2"], []]
    base, _ = _scripted(monkeypatch, tok, turns)
    base.extend(prompt_ids(it, tok, model.media_token_counts) for it in items[:2])
    tool = FakeTool([Obs("error", "ZeroDivisionError"), Obs("ok", "1"), Obs("ok", "2")])
    eps = solve_with_tool(model, tok, items[:2], tool, max_calls=0)
    assert tool.calls == [] and eps[0].answer == "x" and eps[0].calls == 1
    turns[:] = [["x" + call_text("1/0"), "5"], [call_text("print(1)"), call_text("print(2)"), "2"]]
    eps = solve_with_tool(model, tok, items[:2], tool, max_calls=2)
    assert eps[0].code_errors == 1 and eps[0].answer == "5"
    assert eps[1].calls == 2 and eps[1].answer == "2" and eps[1].turns == 3
    with pytest.raises(ValueError, match="max_calls"):
        solve_with_tool(model, tok, items, tool, max_calls=-1)


def test_oracle_in_the_real_sandbox(items):
    """The scripted upper bound runs in the real tool and its answers score 1 on charts."""
    strong_mode_or_skip()
    from k25mini.tools import CodeTool

    tool = CodeTool()
    try:
        eps = oracle_answers(items, tool)
    finally:
        tool.close()
    assert all(score(it, e.answer) == 1.0 for it, e in zip(items, eps))
    assert all(e.sandbox and "WEAK" not in e.sandbox for e in eps)


def test_model_code_runs_in_the_sandbox(tok):
    """No path runs model-written code outside the tool: the rollout module never executes code itself."""
    import inspect

    src = inspect.getsource(rollout)
    assert "exec(" not in src and "eval(" not in src and "local_runner" not in src
    assert NEWLINE == 10
    w = World(0, scale="cpu")
    assert make_eval_suite(w, "Code", 1)  # text items have no image: the episode starts without arrays
    assert rollout._episode_arrays(make_eval_suite(w, "Code", 1)[0]) == {}


def test_generation_stops_when_positions_run_out(tok):
    """A row whose context fills the model's positions stops (no crash); a prompt of exactly max positions still
    gets its one next token; shorter rows in the same batch decode on unharmed."""
    torch.manual_seed(0)
    cfg = preset("nano")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, max_position_embeddings=24))
    m = K25ForConditionalGeneration(cfg)
    long, short = list(range(5, 5 + 20)), list(range(5, 5 + 4))
    never = {-1: False}  # no stop token: rows run to their limit
    outs = greedy_generate(m, [long, short], None, max_new_tokens=12, stops=never)
    assert len(outs[0]) == 24 - 20 + 1 and len(outs[1]) == 12
    alone = greedy_generate(m, [short], None, max_new_tokens=12, stops=never)
    assert alone[0] == outs[1]
    assert len(greedy_generate(m, [list(range(5, 29))], None, 4, stops=never)[0]) == 1
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        greedy_generate(m, [list(range(5, 30))], None, 4)


def test_full_context_ends_the_episode(monkeypatch, model, tok, items):
    """A call whose result fills the context: the episode ends unanswered with status ``context_full``."""
    turns = [[call_text("print(1)")], ["4"]]
    base, _ = _scripted(monkeypatch, tok, turns)
    base.extend(prompt_ids(it, tok, model.media_token_counts) for it in items[:2])
    max_pos = model.language_model.config.max_position_embeddings
    monkeypatch.setattr(rollout, "result_text", lambda text: "a " * max_pos)
    eps = solve_with_tool(model, tok, items[:2], FakeTool([Obs("ok", "1")]))
    assert eps[0].answer == "" and eps[0].statuses == ["ok", "context_full"] and eps[0].turns == 1
    assert eps[1].answer == "4"
