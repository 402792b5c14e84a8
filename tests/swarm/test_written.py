"""The model-written swarm (k25mini.swarm.written): context layout, short pages, the teacher, SFT sequences, and
the provenance check: every executed call comes from the policy's own sampled tokens."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
import torch

from k25mini.agents import SINGLE_AGENT_TOOLS, SWARM_TOOLS, Message, SwarmConfig, SwarmRuntime, run_sync
from k25mini.agents.toolcall import parse_tool_calls
from k25mini.data.tokenizer import Tokenizer
from k25mini.model import K2ForCausalLM
from k25mini.swarm import make_swarm_tasks, score_answer
from k25mini.swarm.train import lm_config
from k25mini.swarm.written import (
    MAIN_SINGLE_PROMPT,
    MAIN_SWARM_PROMPT,
    CompactWeb,
    TextOnlyVLM,
    WrittenEnv,
    WrittenPolicy,
    WrittenTeacher,
    call_text,
    copy_example,
    render_context,
    run_written,
    sft_sequences,
)
from k25mini.world import World

TOK = Tokenizer()


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=3, n_entities=40)


def _count(s: str) -> int:
    return len(TOK.encode(s))


def _run(world, tasks, main, sub, swarm: bool, window: int = 100_000, budget=None):
    cfg = SwarmConfig(max_steps_main=24, max_steps_sub=12, critical_steps_budget=budget, context_window=window,
                      max_observation=400, main_tools=SWARM_TOOLS if swarm else SINGLE_AGENT_TOOLS, count=_count)
    web = CompactWeb(world)
    rt = SwarmRuntime(web, main, sub if swarm else None, cfg)

    async def go():
        return await asyncio.gather(*[rt.run(t.text, MAIN_SWARM_PROMPT if swarm else MAIN_SINGLE_PROMPT,
                                             episode_id=f"e{i}") for i, t in enumerate(tasks)])

    return run_sync(go()), web


def test_render_context_layout():
    msgs = [Message("system", "swarm"), Message("user", "Make a table."), Message("assistant", "X"),
            Message("tool", "page", "browse")]
    assert render_context(msgs) == ("<|bos|><|im_system|>swarm<|im_end|><|im_user|>Make a table.<|im_end|>"
                                    "<|im_assistant|>X<|im_end|><|tool_result_begin|>page<|tool_result_end|>"
                                    "<|im_assistant|>")
    ids = TOK.encode(render_context(msgs))
    assert ids[0] == TOK.bos_id and ids[-1] == TOK.encode("<|im_assistant|>")[0]


def test_call_text_round_trips():
    t = call_text("assign_task", {"agent": "w", "prompt": "Look up: Bolo, Kami. Columns: name, weight."})
    parsed = parse_tool_calls(t)
    assert parsed.errors == [] and len(parsed.calls) == 1
    assert parsed.calls[0].name == "assign_task"
    assert parsed.calls[0].args == {"agent": "w", "prompt": "Look up: Bolo, Kami. Columns: name, weight."}


def test_compact_web_pages_hold_every_fact(world):
    web = CompactWeb(world)
    for e in world.entities:
        page = web.browse(f"entity/{e.name.lower()}")
        facts = dict(kv.strip().split(" ", 1) for kv in page.split(";"))
        assert facts == {"name": e.name, **{a: e.value(a) for a in ("colour", "shape", "region", "weight",
                                                                        "speed", "friend")}}
    regions = {e.region for e in world.entities}
    for r in regions:
        head, _, names = web.browse(f"region/{r}").partition(": ")
        assert head == r
        assert sorted(names.rstrip(".").split(", ")) == sorted(e.name for e in world.entities if e.region == r)
    assert web.search(sorted(regions)[0], 3)[0] == f"region/{sorted(regions)[0]}"
    with pytest.raises(KeyError, match="no page"):
        web.browse("entity/nobody")


def test_teacher_swarm_and_serial_solve_with_room(world):
    tasks = make_swarm_tasks(world, 8, 0, min_rows=4, max_rows=10)
    teacher = WrittenTeacher(seed=1)
    eps, _ = _run(world, tasks, teacher, teacher, swarm=True)
    assert all(score_answer(t, e.answer)["item_f1"] == 1.0 for t, e in zip(tasks, eps))
    assert all(e.n_errors == 0 for e in eps)
    widths = {teacher.width_for(t.text) for t in tasks}
    assert len(widths) >= 3, f"the warm start must not fix the fan-out width; got {widths}"
    for t, e in zip(tasks, eps):
        w = teacher.width_for(t.text)
        assert e.n_assigned == (min(w, t.n_rows) if w else 0)
    solo, _ = _run(world, tasks, teacher, None, swarm=False)
    assert all(score_answer(t, e.answer)["item_f1"] == 1.0 for t, e in zip(tasks, solo))
    # serial: one browse per row plus the region pages and the answer
    for t, e in zip(tasks, solo):
        n_regions = 2 if " or the " in t.text else 1
        assert e.critical_steps == n_regions + t.n_rows + 1


def test_teacher_small_window_loses_rows_but_never_loops(world):
    tasks = make_swarm_tasks(world, 6, 0, min_rows=8, max_rows=10)
    teacher = WrittenTeacher(widths=(0,))
    eps, _ = _run(world, tasks, teacher, None, swarm=False, window=600)
    for t, e in zip(tasks, eps):
        assert e.finished and e.critical_steps < 24
        assert score_answer(t, e.answer)["item_f1"] < 1.0  # the window dropped the first pages


def test_sft_sequences_merge_steps_and_mask_own_tokens(world):
    tasks = make_swarm_tasks(world, 3, 0, min_rows=4, max_rows=10)
    teacher = WrittenTeacher(widths=(2,))
    eps, _ = _run(world, tasks, teacher, teacher, swarm=True)
    seqs = sft_sequences(eps)
    n_agents = sum(len(e.agents) for e in eps)
    assert len(seqs) == n_agents  # the window never dropped anything: one chain per agent
    steps = [s for e in eps for s in e.steps]
    for ids, mask in seqs:
        assert len(ids) == len(mask)
        assert ids[0] == TOK.bos_id
    # every step's prompt + completion is a prefix of its agent's sequence; the mask is exactly the completions
    for s in steps:
        p, c = s.info["prompt_ids"], s.info["completion_ids"]
        ids, mask = next((i, m) for i, m in seqs if i[: len(p) + len(c)] == p + c)
        assert mask[len(p) : len(p) + len(c)] == [True] * len(c)
        assert not any(mask[len(p) - 1 : len(p)])
    assert sum(sum(m) for _, m in seqs) == sum(len(s.info["completion_ids"]) for s in steps)
    assert sft_sequences(eps, max_len=10) == []


def _random_vlm(seed: int = 0) -> TextOnlyVLM:
    torch.manual_seed(seed)
    return TextOnlyVLM(K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=1024)))


def test_policy_text_is_its_sampled_tokens(world):
    """With a real (random) model: each step's text is the decoded completion, and the calls the runtime ran
    are exactly what parsing that text gives."""
    tasks = make_swarm_tasks(world, 2, 0, min_rows=4, max_rows=10)
    pol = WrittenPolicy(_random_vlm(), temperature=1.0, max_new_tokens=24, seed=0)
    eps, _ = _run(world, tasks, pol, pol, swarm=True, window=500)
    n = 0
    for e in eps:
        for s in e.steps:
            if "completion_ids" not in s.info:
                continue
            comp = s.info["completion_ids"]
            body = comp[:-1] if comp and comp[-1] == TOK.im_end_id else comp
            assert s.text == TOK.decode(body)
            assert s.calls == [c.to_dict() for c in parse_tool_calls(s.text).calls]
            assert len(s.info["logp"]) == len(comp)
            n += 1
    assert n > 0
    assert pol.n_batches < pol.n_generated  # agents were sampled together


class _TeacherTokens(WrittenPolicy):
    """A WrittenPolicy whose 'sampler' returns the teacher's tokens: valid calls through the same text path."""

    def __init__(self, model, teacher: WrittenTeacher) -> None:
        super().__init__(model, max_new_tokens=400)
        self.teacher = teacher

    async def act(self, view):
        a = self.teacher.act(view)
        comp = a.info["completion_ids"]
        self.n_generated += 1
        return type(a)(text=TOK.decode(comp[:-1]), info={**a.info, "logp": [0.0] * len(comp)})


def test_every_executed_call_comes_from_the_written_text(world):
    """The acceptance check of issue #18: every create_subagent / assign_task argument and every subagent tool
    call the environment executed appears verbatim in the text the policy wrote; nothing is rewritten."""
    tasks = make_swarm_tasks(world, 4, 0, min_rows=4, max_rows=10)
    pol = _TeacherTokens(_random_vlm(), WrittenTeacher(widths=(2, 3), seed=0))
    eps, web = _run(world, tasks, pol, pol, swarm=True)
    written = [c for e in eps for s in e.steps for c in parse_tool_calls(
        TOK.decode(s.info["completion_ids"][:-1])).calls]
    # what the web executed (browse page ids) is exactly what was written, in multiset terms
    browsed = sorted(arg for action, arg in web.calls)
    assert browsed == sorted(c.args["page_id"] for c in written if c.name == "browse")
    # each subagent's task is an assign_task prompt as written, each template a create_subagent as written
    prompts = sorted(c.args["prompt"] for c in written if c.name == "assign_task")
    subs = [a for e in eps for a in e.agents.values() if a.role == "subagent"]
    assert sorted(a.task for a in subs) == prompts and prompts
    templates = {c.args["system_prompt"] for c in written if c.name == "create_subagent"}
    assert {a.system_prompt for a in subs} <= templates
    # the final answers are the finish arguments as written
    for e in eps:
        last = [s for s in e.steps if s.role == "main"][-1]
        fin = [c for c in parse_tool_calls(last.text).calls if c.name == "finish"]
        assert fin and fin[0].args["answer"] == e.answer


def test_policy_refuses_a_context_without_room(world):
    tasks = make_swarm_tasks(world, 1, 0, min_rows=4, max_rows=10)
    pol = WrittenPolicy(_random_vlm(), max_new_tokens=1000)  # 1024 positions: no prompt leaves 1000
    eps, _ = _run(world, tasks, pol, pol, swarm=True)
    assert eps[0].errors["raised"] >= 1 and eps[0].answer is None


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"max_new_tokens": 0}, {"max_new_tokens": True}])
def test_policy_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WrittenPolicy(_random_vlm(), **bad)


def test_teacher_bad_widths():
    with pytest.raises(ValueError, match="widths"):
        WrittenTeacher(widths=())
    with pytest.raises(ValueError, match="widths"):
        WrittenTeacher(widths=(-1,))


def test_written_batches_and_padding():
    from k25mini.swarm.written import pad_written, written_batches

    seqs = [([1] * n, [False] * (n - 2) + [True, True]) for n in (5, 9, 3, 7, 50)]
    picks = written_batches(seqs, 20, tokens_per_batch=20, seed=0)
    assert len(picks) == 20
    for b in picks:
        assert b and (len(b) == 1 or len(b) * max(len(seqs[i][0]) for i in b) <= 20)
    assert picks == written_batches(seqs, 20, tokens_per_batch=20, seed=0)
    ids, labels = pad_written([seqs[2], seqs[0]])
    assert ids.shape == (2, 5) and ids[0, 3:].eq(TOK.pad_id).all()
    assert labels[0].tolist() == [-100, 1, 1, -100, -100] and labels[1].tolist() == [-100, -100, -100, 1, 1]
    with pytest.raises(ValueError, match="mask"):
        pad_written([([1, 2], [True])])
    with pytest.raises(ValueError, match="tokens_per_batch"):
        written_batches(seqs, 1, tokens_per_batch=0)
    with pytest.raises(ValueError, match="non-empty"):
        written_batches([], 1)


def test_sft_written_lowers_the_loss_on_teacher_traces(world):
    from k25mini.swarm.written import sft_written

    tasks = make_swarm_tasks(world, 2, 0, min_rows=4, max_rows=6)
    teacher = WrittenTeacher(widths=(2,))
    eps, _ = _run(world, tasks, teacher, teacher, swarm=True)
    seqs = sft_sequences(eps)
    torch.manual_seed(0)
    lm = K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=1024))
    before = torch.get_rng_state()
    losses = sft_written(lm, seqs, 12, tokens_per_batch=3000, lr=1e-2, warmup=2)
    assert torch.equal(before, torch.get_rng_state())
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0


def test_rl_batch_equals_per_step_packing(world):
    """Merging an episode's main-agent steps into one chain gives the same completion log-probs as packing every
    step with its own full prompt (the prompts are exact prefixes)."""
    from k25mini.rl.step import completion_logp, pack_completions
    from k25mini.swarm.written import rl_batch

    tasks = make_swarm_tasks(world, 2, 0, min_rows=4, max_rows=6)
    vlm = _random_vlm(1)
    pol = WrittenPolicy(vlm, temperature=1.0, max_new_tokens=16, seed=3)
    eps, _ = _run(world, tasks, pol, pol, swarm=True, window=100_000)
    adv = [0.5, -0.5]
    merged = rl_batch(eps, adv)
    steps = [(s.info["prompt_ids"], s.info["completion_ids"], s.info["logp"], a)
             for e, a in zip(eps, adv) for s in e.loss_steps() if "prompt_ids" in s.info]
    per_step = pack_completions(steps, TOK.pad_id)
    assert int(merged.mask.sum()) == int(per_step.mask.sum()) == sum(len(c) for _, c, _, _ in steps)
    lm = vlm.language_model
    with torch.no_grad():
        a = completion_logp(lm, merged.ids, merged.mask)[merged.mask]
        b = completion_logp(lm, per_step.ids, per_step.mask)[per_step.mask]
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert torch.allclose(merged.old_logp[merged.mask], per_step.old_logp[per_step.mask])
    # the sampler's log-probs are the model's own (temperature 1): π_old = teacher forcing
    assert torch.allclose(merged.old_logp[merged.mask], a, atol=1e-4)
    # a random model's bytes need not survive decode -> encode (invalid UTF-8), which breaks a chain into rows
    assert set(merged.advantages.tolist()) <= set(adv) and len(merged.advantages) >= len(eps)
    # text that round-trips (what a trained model writes) merges into one row per episode
    teacher_eps, _ = _run(world, tasks, _TeacherTokens(vlm, WrittenTeacher(widths=(2,))), pol, swarm=True)
    assert rl_batch(teacher_eps, adv).advantages.tolist() == adv
    with pytest.raises(ValueError, match="one advantage per episode"):
        rl_batch(eps, [0.0])


def test_rl_written_runs_one_iteration_and_updates_only_the_orchestrator(world, monkeypatch):
    import k25mini.swarm.written as written
    from k25mini.swarm.written import WrittenEnv, WrittenRLConfig, rl_written

    tasks = make_swarm_tasks(world, 2, 0, min_rows=4, max_rows=6)
    orch = K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=1024))
    sub_vlm = _random_vlm(2)
    sub_before = {k: v.clone() for k, v in sub_vlm.state_dict().items()}
    before = {k: v.clone() for k, v in orch.state_dict().items()}
    env = WrittenEnv(window=600, max_new_tokens=24, max_positions=1024, max_steps_main=4, max_steps_sub=3)
    cfg = WrittenRLConfig(iterations=1, tasks_per_iter=1, group_size=2, lr=1e-2, updates_per_iter=1)
    # random models earn equal rewards (no call parses): no signal, so no step at all
    hist = rl_written(orch, [(world, tasks)], WrittenPolicy(sub_vlm, max_new_tokens=24), env, cfg, seed=0)
    assert len(hist) == 1 and {"item_f1", "reward", "errors", "lambda1", "r_parallel", "updated"} <= set(hist[0])
    assert hist[0]["updated"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in orch.state_dict().items())
    # rewards that differ within the group (item-F1 faked per episode): the orchestrator, and only it, moves
    calls = iter(range(1000))
    real = written.episode_metrics

    def varied(ep, task):
        return {**real(ep, task), "item_f1": float(next(calls) % 2)}

    monkeypatch.setattr(written, "episode_metrics", varied)
    hist = rl_written(orch, [(world, tasks)], WrittenPolicy(sub_vlm, max_new_tokens=24), env, cfg, seed=0)
    assert hist[0]["updated"] == 1.0 and hist[0]["item_f1"] == 0.5
    assert any(not torch.equal(before[k], v) for k, v in orch.state_dict().items())
    assert all(torch.equal(sub_before[k], v) for k, v in sub_vlm.state_dict().items())
    # a group whose rewards are all equal gets advantages of exactly 0 beside a group that has a spread
    f1s = iter([0.0, 1.0] * 3 + [0.3] * 6)  # float32 mean of six 0.3 is not 0.3: the raw advantage is ~3e-8
    monkeypatch.setattr(written, "episode_metrics", lambda ep, task: {**real(ep, task), "item_f1": next(f1s)})
    seen = []
    real_batch = written.rl_batch
    monkeypatch.setattr(written, "rl_batch", lambda eps, adv: seen.append(list(adv)) or real_batch(eps, adv))
    two = WrittenRLConfig(iterations=1, tasks_per_iter=2, group_size=6, lr=1e-2, updates_per_iter=1)
    hist = rl_written(orch, [(world, tasks)], WrittenPolicy(sub_vlm, max_new_tokens=24), env, two, seed=0)
    assert hist[0]["updated"] == 1.0
    assert seen[0][:6] == pytest.approx([-0.5, 0.5] * 3) and seen[0][6:] == [0.0] * 6
    with pytest.raises(ValueError, match="no task"):
        rl_written(orch, [], WrittenPolicy(sub_vlm), env, cfg)


def test_written_env_validates_sizes():
    from k25mini.swarm.written import WrittenEnv

    with pytest.raises(ValueError, match="max_positions"):
        WrittenEnv(window=1200, max_new_tokens=256, max_positions=1280)
    with pytest.raises(ValueError, match="min_rows"):
        WrittenEnv(min_rows=5, max_rows=4)


def test_teacher_solves_deep_questions_alone_and_by_delegation(world):
    from k25mini.swarm.written import WrittenEnv, run_written

    tasks = make_swarm_tasks(world, 0, 8, hops=2) + make_swarm_tasks(world, 0, 4, hops=3)
    assert any("the friend of the " in t.text for t in tasks)  # some start by look (a search is needed)
    teacher = WrittenTeacher(widths=(0, 1), seed=2)
    for swarm in (True, False):
        eps, web = run_written(world, tasks, teacher, teacher, WrittenEnv(), swarm=swarm)
        assert all(score_answer(t, e.answer)["item_f1"] == 1.0 for t, e in zip(tasks, eps))
        assert all(e.n_errors == 0 for e in eps)
        if swarm:
            assert {e.n_assigned for e in eps} == {0, 1}
        else:  # one browse per hop, a search when the start is named by its look, and the answer
            for t, e in zip(tasks, eps):
                hops = t.deep.meta["hops"]
                assert e.critical_steps == hops + int(t.deep.meta["by_look"]) + 1


def test_copy_examples_need_the_context():
    import random as _random

    from k25mini.swarm.written import COPY_KINDS, copy_example

    rng = _random.Random(0)
    seen = set()
    for _ in range(60):
        p, t, kind = copy_example(rng)
        seen.add(kind)
        prompt, target = TOK.decode(p), TOK.decode(t)
        assert target.endswith("<|im_end|>") and kind in COPY_KINDS
        body = target[: -len("<|im_end|>")]
        names = prompt.split(": ", 1)[1].split(".", 1)[0].split(", ")
        if kind == "list":
            assert body == ", ".join(names)
        elif kind == "next":
            given = prompt.split("<|tool_result_begin|>")[1].split("<|tool_result_end|>")[0]
            assert body == names[names.index(given) + 1]
        else:
            k = int(prompt.split("<|tool_result_begin|>")[1].split("<|tool_result_end|>")[0])
            assert body == '{"page_id":"entity/' + names[k].lower() + '"}'
    assert seen == set(COPY_KINDS)


def test_copy_warmup_and_accuracy_run():
    from k25mini.swarm.written import copy_accuracy, copy_warmup

    torch.manual_seed(0)
    lm = K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=256))
    losses = copy_warmup(lm, 6, batch_size=8, lr=1e-2, warmup=1)
    assert len(losses) == 6 and losses[-1] < losses[0]
    acc = copy_accuracy(TextOnlyVLM(lm), n=9)
    assert set(acc) == {"all", "list", "next", "page_id"} and 0.0 <= acc["all"] <= 1.0


def test_learned_swarm_world_seeds_are_disjoint():
    from k25mini.experiments.ch08_swarm.learned_seeds import DEV_WORLD_SEEDS, EVAL_WORLD_SEEDS, TRAIN_WORLD_SEEDS

    train, dev, ev = set(TRAIN_WORLD_SEEDS), set(DEV_WORLD_SEEDS), set(EVAL_WORLD_SEEDS)
    assert not (train & dev) and not (train & ev) and not (dev & ev)
    assert len(ev) >= 3


def test_scratchpad_notes_what_is_left_and_keeps_scanning_past_drops(world):
    tasks = make_swarm_tasks(world, 6, 0, min_rows=8, max_rows=10)
    pad = WrittenTeacher(widths=(0, 2), seed=4, scratchpad=True)
    eps, _ = _run(world, tasks, pad, pad, swarm=True)
    assert all(score_answer(t, e.answer)["item_f1"] == 1.0 for t, e in zip(tasks, eps))
    for e in eps:
        for s in e.steps:
            browses = [c for c in s.calls if c["name"] == "browse" and c["args"]["page_id"].startswith("entity/")]
            if browses:
                assert s.text.startswith("todo: ")
    # a small window: without notes the serial scan stops at the first drop; with them it browses every row
    plain, _ = _run(world, tasks, WrittenTeacher(widths=(0,)), None, swarm=False, window=600)
    noted, web = _run(world, tasks, WrittenTeacher(widths=(0,), scratchpad=True), None, swarm=False, window=600)
    for t, a, b in zip(tasks, plain, noted):
        assert b.finished and b.critical_steps == (2 if " or the " in t.text else 1) + t.n_rows + 1
        assert a.critical_steps < b.critical_steps
    f1 = [score_answer(t, e.answer)["item_f1"] for t, e in zip(tasks, noted)]
    assert max(f1) < 1.0  # the early pages are still lost from the window


# ------------------------------------------------------------------------------------- a BPE tokenizer


@pytest.fixture(scope="module")
def bpe(world):
    """A BPE tokenizer trained on teacher traces of other worlds than ``world``."""
    from k25mini.data.bpe import BPETokenizer
    texts = []
    for ws in (101, 102):
        w = World(seed=ws, n_entities=40)
        t = WrittenTeacher(seed=ws)
        for swarm in (True, False):
            eps, _ = run_written(w, make_swarm_tasks(w, 2, 0, min_rows=4, max_rows=10), t, t, WrittenEnv(),
                                 swarm=swarm)
            texts += [TOK.decode(i) for i, _ in sft_sequences(eps)]
    return BPETokenizer.train(texts, vocab_size=640)


def test_bpe_traces_chain_and_windows_count_bpe_tokens(world, bpe):
    tasks = make_swarm_tasks(world, 3, 0, min_rows=8, max_rows=10)
    env = WrittenEnv()
    t_byte, t_bpe = WrittenTeacher(widths=(0,), seed=1), WrittenTeacher(widths=(0,), seed=1, tokenizer=bpe)
    eb, _ = run_written(world, tasks, t_byte, t_byte, env, swarm=False, window=400)
    ep, _ = run_written(world, tasks, t_bpe, t_bpe, env, swarm=False, window=400, tokenizer=bpe)
    # the same 400-token window holds more pages when tokens are BPE tokens: fewer rows are lost
    f_byte = [score_answer(t, e.answer)["item_f1"] for t, e in zip(tasks, eb)]
    f_bpe = [score_answer(t, e.answer)["item_f1"] for t, e in zip(tasks, ep)]
    assert sum(f_bpe) > sum(f_byte)
    # traces: ids are BPE ids, each step's prompt + completion is a prefix of its chain, and text round-trips
    seqs = sft_sequences(ep)
    assert any(i >= 275 for ids, _ in seqs for i in ids)
    for e in ep:
        for s in e.steps:
            p, c = s.info["prompt_ids"], s.info["completion_ids"]
            assert any(ids[: len(p) + len(c)] == p + c for ids, _ in seqs)
            assert bpe.decode(c) == s.text + "<|im_end|>"
            assert len(p) <= 400 + 2  # the window counts the markers around each message
    for e in eb:
        assert all(len(s.info["prompt_ids"]) <= 400 + 2 for s in e.steps)
    n_bpe = sum(len(i) for i, _ in seqs)
    n_byte = sum(len(TOK.encode(bpe.decode(i))) for i, _ in seqs)
    assert n_bpe < 0.5 * n_byte


def test_bpe_policy_reads_and_writes_its_tokenizer(world, bpe):
    torch.manual_seed(0)
    lm = K2ForCausalLM(replace(lm_config(32, 1), max_position_embeddings=1024, vocab_size=bpe.vocab_size))
    pol = WrittenPolicy(TextOnlyVLM(lm), temperature=1.0, max_new_tokens=24, seed=0, tokenizer=bpe)
    tasks = make_swarm_tasks(world, 2, 0, min_rows=4, max_rows=10)
    eps, _ = run_written(world, tasks, pol, pol, WrittenEnv(), swarm=True, tokenizer=bpe)
    steps = [s for e in eps for s in e.steps if "completion_ids" in s.info]
    assert steps
    for s in steps:
        comp = s.info["completion_ids"]
        body = comp[:-1] if comp and comp[-1] == bpe.im_end_id else comp
        assert s.text == bpe.decode(body)
        assert s.info["prompt_ids"][0] == bpe.bos_id
    with pytest.raises(ValueError, match="model's vocabulary holds 512"):
        WrittenPolicy(_random_vlm(), tokenizer=bpe)
    with pytest.raises(ValueError, match="tokenizer must be a k25mini Tokenizer"):
        WrittenPolicy(_random_vlm(), tokenizer="bytes")
    p, t, _ = copy_example(random.Random(0), bpe)
    assert bpe.decode(t).endswith("<|im_end|>") and max(p + t) < bpe.vocab_size
