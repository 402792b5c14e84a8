"""Chapter 07's mismatch ablation: the perturbed sampler, the arms' losses, the summary, a smoke run."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from k25mini.config import preset
from k25mini.experiments.ch07_clipped_rl.mismatch import (
    ARMS,
    mismatch_config,
    perturb_,
    run_mismatch,
    summarise_mismatch,
)
from k25mini.experiments.ch07_clipped_rl.report import section
from k25mini.multimodal import K25ForConditionalGeneration


@pytest.mark.parametrize("kw, msg", [({"iterations": 0}, "iterations"), ({"updates": 0}, "updates"),
                                     ({"sigma": -0.1}, "sigma"), ({"arms": ("pg", "nope")}, "arms"),
                                     ({"seeds": ()}, "seeds")])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        mismatch_config("smoke", **kw)


def test_arms_are_the_variants_the_chapter_compares():
    assert ARMS["pg"][0]["alpha"] < 1e-6 and ARMS["pg"][0]["beta"] > 1e6 and ARMS["pg"][0]["tau"] == 0
    assert ARMS["mask"][0]["tau"] == 0 and ARMS["mask_tau_all"][0]["penalty_on_masked"] is True
    assert ARMS["control"][1] == 0.0 and all(ARMS[a][1] == 1.0 for a in ARMS if a != "control")
    assert mismatch_config("smoke").key() != mismatch_config("smoke", sigma=0.1).key()


def test_perturb_adds_relative_noise_to_the_language_model_only():
    torch.manual_seed(0)
    policy = K25ForConditionalGeneration(preset("nano"))
    s = copy.deepcopy(policy)
    perturb_(s, policy, 0.05, torch.Generator().manual_seed(0))
    for (n, a), b in zip([(n, p.detach()) for n, p in policy.named_parameters()], [p.detach() for p in s.parameters()]):
        if n.startswith("vision_tower") or a.numel() == 1:
            assert torch.equal(a, b), n
        elif a.numel() > 1 and float(a.std()) > 0:
            rel = float((b - a).std() / a.std())
            assert 0.02 < rel < 0.1, (n, rel)
    perturb_(s, policy, 0.0, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), s.parameters()))


def _run(arm, seed, grads, rewards):
    return {"arm": arm, "seed": seed, "curve": [{"grad_norm": g, "reward": r, "masked_frac": 0.1,
                                                 "first_log_ratio_std": 0.5} for g, r in zip(grads, rewards)]}


def test_summary_counts_spikes_against_the_control():
    cfg = mismatch_config("smoke", iterations=8, seeds=(0, 1))
    runs = [_run("control", 0, [1.0] * 8, [0.1] * 8), _run("control", 1, [1.0] * 8, [0.2] * 8),
            _run("pg", 0, [1, 50, 1, 1, 20, 1, 1, 1], [0.1] * 8), _run("pg", 1, [1.0] * 8, [0.1] * 8)]
    res = summarise_mismatch(cfg, runs)
    assert res["spike_threshold"] == 10.0
    assert res["table"]["pg"]["spikes"]["values"] == [2.0, 0.0] and res["table"]["control"]["spikes"]["mean"] == 0
    assert res["table"]["pg"]["grad_norm_max"]["values"] == [50.0, 1.0]


def test_smoke_run(tmp_path):
    cfg = mismatch_config("smoke", seeds=(0,), arms=("pg", "mask_tau", "control"))
    res = run_mismatch(cfg, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", log=lambda m: None)
    assert set(res["table"]) == {"pg", "mask_tau", "control"}
    one = json.loads((tmp_path / "results" / "rl_mismatch" / "smoke" / "pg-s0.json").read_text())
    assert len(one["curve"]) == cfg.iterations and one["sigma"] == cfg.sigma
    assert one["curve"][0]["first_log_ratio_std"] > 0
    ctrl = json.loads((tmp_path / "results" / "rl_mismatch" / "smoke" / "control-s0.json").read_text())
    assert ctrl["sigma"] == 0.0 and ctrl["curve"][0]["first_log_ratio_absmax"] < 1e-3
    # the chapter's section shows the ablation once its summary exists (Table 2 missing: the header says so)
    md = section(tmp_path / "results", None, "smoke")
    assert "No results yet" in md and "| policy gradient × ρ, no mask |" in md and "### Why the mask" in md
