"""Seam: notebook 06's from-scratch sandbox, trajectory encoder, batcher, loss and SFT loop agree with
k25mini.tools / k25mini.sft / the Trainer; its results views read the summary the experiment writes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from k25mini.config import preset
from k25mini.data import Tokenizer
from k25mini.experiments.ch06_zero_vision.config import TEXT_SUITES, VISION_SKILLS, config_for
from k25mini.experiments.ch06_zero_vision.run import summarise
from k25mini.multimodal import K25ForConditionalGeneration
from k25mini.sft.data import build_sft_set, sft_batch, sft_loss
from k25mini.sft.programs import palette_setup, program_for
from k25mini.sft.trajectories import (
    direct,
    encode_trajectory,
    local_runner,
    result_text,
    run_programs,
    text_twin,
    visual_trajectory,
)
from k25mini.tools import CodeTool, SandboxLimits
from k25mini.tools import helpers as tool_helpers
from k25mini.world import World
from k25mini.world.rng import rng_for
from seam import load_notebook_defs
from tests.tools.conftest import strong_mode_or_skip

NB = "notebooks/06_zero_vision_sft.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.fixture(scope="module")
def world():
    return World(0, scale="smoke")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return K25ForConditionalGeneration(preset("nano"))


@pytest.fixture(scope="module")
def sets(world):
    out = {arm: build_sft_set(world, arm, 40, seed=1) for arm in ("zero_vision", "text_visual")}
    assert all(len(rows) > 0 for rows in out.values())  # tests loop over these rows
    return out


# ----------------------------------------------------------------------------------------------- the sandbox
SNIPPETS = [("print(6 * 7)", "ok"), ("1 / 0", "error"), ("while True:\n    pass", "timeout"),
            ("blob = bytearray(8 * 2**30)", "limit"), ("open('/nonexistent-dir/x', 'w')", "error")]


def test_tiny_sandbox_reports_what_the_code_tool_reports(nb):
    strong_mode_or_skip()
    tool = CodeTool(limits=SandboxLimits(timeout_s=1.0, grace_s=0.5)).start()
    try:
        for code, want in SNIPPETS:
            limit = 1.0 if want == "timeout" else 20.0  # generous where nothing should time out (a loaded CI box)
            status, text = nb.tiny_sandbox(code, timeout_s=limit)
            obs = tool.run(code, timeout=limit)
            assert status == obs.status == want, (code, status, obs.status, text)
            if want == "ok":
                assert text == obs.text == "42"
            elif want in ("error", "limit"):
                assert text.split(":")[0] == nb.last_line(obs.text).split(":")[0], (text, obs.text)
        code = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"
        status, text = nb.tiny_sandbox(code, timeout_s=20.0, isolate_network=True)
        obs = tool.run(code, timeout=20.0)
        assert status == obs.status == "error"
        assert "Network is unreachable" in text and "Network is unreachable" in obs.text
    finally:
        tool.close()


def test_tiny_sandbox_scrubs_the_environment_and_limits_files(nb, monkeypatch):
    monkeypatch.setenv("K25_SEAM_SECRET", "hunter2")
    code = "import os\nprint(os.environ.get('K25_SEAM_SECRET', 'absent'))"
    assert nb.tiny_sandbox(code, timeout_s=20.0) == ("ok", "absent")
    status, text = nb.tiny_sandbox("open('big', 'wb').write(b'0' * (2 << 20))", timeout_s=20.0)
    assert status == "limit" and "[Errno 27]" in text


# ----------------------------------------------------------------------------------------------- trajectories
def _tool_items(world, n=3):
    out = []
    for skill in ("count", "compare", "locate", "chart", "motion"):
        out += [world.sample(skill, "train", rng_for(world.seed, "seam06", skill, i)) for i in range(n)]
    return out


def test_encoder_matches_encode_trajectory(nb, world, tok, model, sets):
    trajs = [t for rows in sets.values() for t in rows]
    for it in _tool_items(world):
        has_program = program_for(it.prompt) is not None  # e.g. a shape count has none
        for ctx in ("describe", "none", "stub"):
            for style in ("concise", "verbose"):
                if not has_program and ctx != "describe":  # nothing to answer from: refused, and only then
                    with pytest.raises(ValueError, match="no program"):
                        text_twin(it, style, ctx)
                    continue
                trajs += run_programs([text_twin(it, style, ctx)], local_runner)
        if has_program:  # a visual trajectory needs a program; any other ValueError fails the test
            trajs += run_programs([visual_trajectory(it)], local_runner)
        trajs.append(direct(it))
    assert any(t.item.images for t in trajs) and any(t.uses_tool for t in trajs)
    for t in trajs:
        ids, trained, media = nb.encode_from_scratch(t, tok, model.media_token_counts)
        ref_ids, ref_trained, ref_media = encode_trajectory(t, tok, model.media_token_counts)
        assert ids == ref_ids and trained == ref_trained and len(media) == len(ref_media)
        roles = nb.encode_with_roles(t, tok, model.media_token_counts)[1]
        assert roles.count("media") == ids.count(tok.media_pad_id)


def test_unrun_call_is_refused_and_results_are_cut_the_same_way(nb, world, tok):
    it = _tool_items(world, 1)[1]  # a compare question: it always has a program
    with pytest.raises(ValueError):
        nb.encode_from_scratch(text_twin(it), tok, lambda im: [1])
    for out in ("7", "  padded \n", "x" * 159, "x" * 160, "y" * 161, "z" * 1000):
        assert nb.result_markup(out) == result_text(out)


# ----------------------------------------------------------------------------------------------- SFT
def test_batch_and_loss_match_the_package(nb, tok, model, sets):
    model.train()
    for rows in sets.values():
        batch_rows = [t for t in rows if t.meta["source"] == "visual"][:2] + rows[:5]
        mine, ref = nb.make_batch(batch_rows, tok, model.media_token_counts), sft_batch(batch_rows, tok,
                                                                                       model.media_token_counts)
        assert torch.equal(mine["input_ids"], ref["input_ids"]) and torch.equal(mine["labels"], ref["labels"])
        assert len(mine["media"]) == len(ref["media"])
        torch.testing.assert_close(nb.masked_loss(model, mine), sft_loss(model, ref)[0])


def test_sft_by_hand_matches_the_trainer(nb, tok, sets):
    from k25mini.train import TrainConfig, Trainer

    rows = sets["text_visual"]
    n = 3
    cfg = TrainConfig(steps=n, lr=2e-3, warmup_steps=1, optimizer="adamw", seed=0, log_every=1, progress=False)
    torch.manual_seed(0)
    mine = K25ForConditionalGeneration(preset("nano"))
    torch.manual_seed(0)
    ref = K25ForConditionalGeneration(preset("nano"))
    batches = [nb.make_batch(rows[4 * i : 4 * i + 4], tok, mine.media_token_counts) for i in range(n)]
    hand = nb.sft_by_hand(mine, batches, cfg)
    tr = Trainer(ref, sft_loss, lambda i: sft_batch(rows[4 * i : 4 * i + 4], tok, ref.media_token_counts), cfg)
    tr.fit()
    package = [r["loss"] for r in tr.history if r.get("split") == "train"]
    assert len(hand) == len(package) == n and hand[-1] != hand[0]
    np.testing.assert_allclose(hand, package, rtol=1e-5, atol=1e-6)
    for p, q in zip(mine.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- the exercise
def _run_trusted(code: str, image: np.ndarray) -> str:
    """Our own exercise program with the tool's helpers and palette, in this process (trusted code only)."""
    ns: dict = {}
    exec(Path(tool_helpers.__file__).read_text(), ns)  # noqa: S102
    exec(palette_setup(), ns)  # noqa: S102
    ns["image"] = image
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, ns)  # noqa: S102
    return buf.getvalue().strip()


def test_shortest_bar_program(nb, world):
    n = 0
    for i in range(40):
        it = world.sample("chart", "train", rng_for(world.seed, "seam06-chart", i))
        vals = [b["value"] for b in it.meta["truth"]["bars"]]
        gold = nb.shortest_bar(it)
        assert (gold is None) == (min(vals) == 0 or vals.count(min(vals)) > 1)
        if gold is not None:
            assert gold == min(it.meta["truth"]["bars"], key=lambda b: b["value"])["colour"]
            assert _run_trusted(nb.SHORTEST, it.images[0]) == gold
            n += 1
    assert n >= 5


# ----------------------------------------------------------------------------------------------- results views
def _fake_results(arms):
    """Per-run records in the shape ``run_arm`` writes, with a planted outcome: (b) lifts count/compare/chart."""
    rng = np.random.default_rng(0)
    base = {k: 0.3 for k in (*VISION_SKILLS, *TEXT_SUITES)}
    out = []
    for arm in arms:
        seeds = (0, 1, 2) if arm in ("zero_vision", "text_visual") else (None,)
        for s in seeds:
            acc = dict(base)
            if arm == "zero_vision":
                acc.update(count=0.8, compare=0.75, chart=0.7, locate=0.5, motion=0.5)
            elif arm == "text_visual":
                acc.update(count=0.85, compare=0.8, chart=0.4, locate=0.35, motion=0.35)
            elif arm == "oracle":
                acc = {k: float(k in ("count", "compare", "locate", "chart", "motion")) for k in VISION_SKILLS}
            per = {k: {"acc": min(1.0, v + (0.02 * rng.standard_normal() if s is not None else 0.0)),
                       "tool_call_rate": 0.9 if arm in ("zero_vision", "text_visual", "oracle") else 0.0,
                       "valid_call_rate": 0.97 if arm != "no_sft" else 0.0, "code_error_rate": 0.05,
                       "steps_per_answer": 1.9, "n": 40, "calls": 36 if arm != "no_sft" else 0}
                   for k, v in acc.items()}
            rec = {"arm": arm, "seed": s, "per": per, "sandbox": "root: netns+mountns+ipcns"}
            if s is not None:
                rec["set"] = {"tool_twin_skills": ["chart", "compare", "count", "locate", "motion"], "images": 0}
            out.append(rec)
    return out


@pytest.mark.parametrize("arms", [("no_sft", "zero_vision", "text_visual", "oracle"), ("no_sft", "zero_vision")])
def test_results_views_read_the_summary(nb, arms):
    cfg = config_for("smoke", eval_per_skill=1, text_eval_items=1)
    res = summarise(cfg, _fake_results(arms))
    for fig in (nb.accuracy_figure(res), nb.tool_use_figure(res)):
        assert fig.axes
        plt.close(fig)
    table = nb.paper_vs_ours(res)
    assert "§4.3" in table and "count" in table
    text = nb.discussion(res)
    assert "every seed: count, compare, locate, chart, motion" in text  # the planted lifts, read back
    if "text_visual" in arms:
        assert "goes the paper's way" in text and "generalisation" in table
    else:
        assert "text + visual" not in text
    assert nb.discussion({"table": {"oracle": {}}}).startswith("The results do not hold")
