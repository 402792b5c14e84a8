"""Answer questions with the code tool: batched greedy turns, each tool call run in a sandboxed episode.

:func:`solve_with_tool` decodes every question's first turn in one batch. A turn ends at ``<|eos|>`` or a
newline (the answer) or at ``<|tool_call_end|>`` (a call). A call's code runs in the question's own episode of
the code tool (a fresh kernel with ``image`` / ``frames`` and the palette), its output is appended as a tool
result and the question goes into the next turn's batch; after ``max_calls`` calls the next turn must answer.
A turn also ends when the context fills the model's positions; an episode whose context is already full before
a turn ends unanswered (status ``context_full``).
Every model-written program runs in :class:`k25mini.tools.CodeTool` (the sandbox); an episode's record carries
the tool's isolation label, so results say when a weak sandbox was used.

:func:`oracle_answers` is the scripted upper bound: the right program (:func:`k25mini.sft.programs.program_for`)
run the same way, its printed output taken as the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from k25mini.agents.toolcall import DEFAULT_FORMAT
from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import prompt_ids
from k25mini.pretrain.evaluate import NEWLINE, greedy_generate
from k25mini.sft.programs import palette_setup, program_for
from k25mini.sft.trajectories import parse_code_call, result_text, with_system
from k25mini.world import Item

__all__ = ["Episode", "solve_with_tool", "oracle_answers", "episode_stats"]


@dataclass
class Episode:
    """One question's rollout: the ``answer``; ``calls`` made; ``valid_calls`` (well-formed ``python`` calls);
    ``code_errors`` (valid calls whose code failed: exception, timeout, limit); ``turns`` (model turns);
    ``transcript`` (everything after the prompt, as text); ``sandbox`` (the tool's label, when it ran)."""

    answer: str = ""
    calls: int = 0
    valid_calls: int = 0
    code_errors: int = 0
    turns: int = 0
    transcript: str = ""
    sandbox: str | None = None
    statuses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "calls": self.calls, "valid_calls": self.valid_calls,
                "code_errors": self.code_errors, "turns": self.turns, "transcript": self.transcript,
                "sandbox": self.sandbox, "statuses": self.statuses}


def _episode_arrays(item: Item) -> dict[str, Any]:
    if len(item.images) != 1:
        return {}
    a = item.images[0]
    return {"frames": a} if a.ndim == 4 else {"image": a}


def _run_call(tool, item: Item, code: str) -> Any:
    """One call in a fresh episode of ``tool`` for ``item`` (kernel state does not persist across calls of the
    same question: every call gets the question's arrays again; our trajectories make one call)."""
    tool.start(**_episode_arrays(item), setup=palette_setup())
    try:
        return tool.run(code)
    finally:
        tool.close()


def solve_with_tool(model, tok: Tokenizer, items: Sequence[Item], tool, max_calls: int = 2,
                    max_new_tokens: int = 320, batch_size: int = 32,
                    on_call: Callable[[Item, str, Any], None] | None = None, system: str = "") -> list[Episode]:
    """Roll every item out with the code tool (see the module docstring); one :class:`Episode` per item.
    ``system`` goes before every prompt (the tool declaration the model was trained with, if any)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items must be a non-empty sequence of eval items")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0:
        raise ValueError(f"max_calls must be an int >= 0, got {max_calls!r}")
    fmt = DEFAULT_FORMAT
    call_end = tok.special_tokens[fmt.call_end]
    call_begin = tok.special_tokens[fmt.call_begin]
    stops = {tok.eos_id: False, NEWLINE: False, call_end: True}
    base = [prompt_ids(with_system(it, system), tok, model.media_token_counts) for it in items]
    extra: list[list[int]] = [[] for _ in items]
    eps = [Episode() for _ in items]
    active = list(range(len(items)))
    max_pos = model.language_model.config.max_position_embeddings
    while active:
        full = [i for i in active if len(base[i]) + len(extra[i]) >= max_pos]
        for i in full:  # no room left for a turn: the episode ends unanswered
            eps[i].statuses.append("context_full")
        active = [i for i in active if i not in set(full)]
        if not active:
            break
        outs = greedy_generate(model, [base[i] + extra[i] for i in active], [items[i].images for i in active],
                               max_new_tokens, stops, batch_size)
        nxt = []
        for i, out in zip(active, outs):
            ep = eps[i]
            ep.turns += 1
            text = tok.decode(out, skip_special=False)
            if call_begin not in out:
                ep.answer = tok.decode(out, skip_special=True).strip()
                ep.transcript += text
                continue
            before = tok.decode(out[: out.index(call_begin)], skip_special=True).strip()
            ep.calls += 1
            if ep.calls > max_calls:  # out of calls: what came before the call is the answer
                ep.answer = before
                ep.transcript += text
                continue
            code, err = parse_code_call(text)
            if code is None:
                obs_text, status = f"Error: {err}", "invalid"
            else:
                ep.valid_calls += 1
                obs = _run_call(tool, items[i], code)
                ep.sandbox = obs.sandbox
                status, obs_text = obs.status, obs.text
                if not obs.ok:
                    ep.code_errors += 1
                if on_call is not None:
                    on_call(items[i], code, obs)
            ep.statuses.append(status)
            res = result_text(obs_text)
            if out[-1] != call_end:  # ran out of tokens inside the call: close it for the context
                out = out + [call_end]
                text += fmt.call_end
            ep.transcript += text + res
            extra[i] = extra[i] + out + tok.encode(res)
            nxt.append(i)
        active = nxt
    return eps


def oracle_answers(items: Sequence[Item], tool) -> list[Episode]:
    """The scripted upper bound: the right program for each question that has one, run in the tool; questions
    with none get an empty answer (and no call)."""
    eps = []
    for it in items:
        ep = Episode(turns=1)
        prog = program_for(it.prompt)
        if prog is not None:
            obs = _run_call(tool, it, prog.concise)
            ep.calls = ep.valid_calls = 1
            ep.code_errors = int(not obs.ok)
            ep.sandbox = obs.sandbox
            ep.statuses.append(obs.status)
            ep.answer = obs.text.strip() if obs.ok else ""
            ep.transcript = prog.concise
        eps.append(ep)
    return eps


def episode_stats(eps: Sequence[Episode]) -> dict[str, float]:
    """Tool-call rate (share of questions with >= 1 call), valid-call rate (valid / all calls), code-error rate
    (failed / valid calls), mean model turns per answer; rates over no calls are NaN-free 0.0 with the counts."""
    n = len(eps)
    calls = sum(e.calls for e in eps)
    valid = sum(e.valid_calls for e in eps)
    errors = sum(e.code_errors for e in eps)
    return {
        "n": n,
        "tool_call_rate": sum(e.calls > 0 for e in eps) / n if n else 0.0,
        "calls": calls,
        "valid_call_rate": valid / calls if calls else 0.0,
        "code_error_rate": errors / valid if valid else 0.0,
        "steps_per_answer": sum(e.turns for e in eps) / n if n else 0.0,
    }
