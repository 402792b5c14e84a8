"""dip_analysis: a dip after injection counts only relative to the early schedule (the stage-transition drop
that every schedule shows is not a dip), and only beyond the seed noise."""

import numpy as np
import pytest

from k25mini.experiments.ch05_fusion.report import dip_analysis

STEPS = list(range(0, 1001, 50))


def _res(curves: dict[str, list[list[float]]]) -> dict:
    runs = []
    for sch, per_seed in curves.items():
        for seed, vals in enumerate(per_seed):
            runs.append({"schedule": sch, "seed": seed, "text_curve": [
                {"step": s, "tf_TextKnow": v, "tf_TextReason": v, "tf_Code": v} for s, v in zip(STEPS, vals)]})
    return {"config": {"joint_steps": 1000}, "table": {k: {} for k in curves}, "runs": runs}


def _curve(f, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [float(f(s) + jitter * rng.standard_normal()) for s in STEPS]


def base(s):  # every schedule drops at the joint-stage start, then climbs
    return 0.40 - (0.10 if s == 50 else 0.0) + 0.0001 * s


def test_transition_drop_alone_is_not_a_dip():
    r = dip_analysis(_res({"early": [_curve(base)], "late": [_curve(base)]}))
    assert r["early"]["verdict"] == "no injection"
    assert r["late"]["verdict"] == "no dip"
    assert r["late"]["transition"] == pytest.approx([0.40, 0.305])


def test_dip_and_recover_relative_to_early():
    def late(s):
        return base(s) - (0.08 if 800 < s <= 900 else 0.0)
    r = dip_analysis(_res({"early": [_curve(base)], "late": [_curve(late)]}))["late"]
    assert r["verdict"] == "dip-and-recover"
    assert r["gap_before"] == pytest.approx(0.0) and r["gap_lowest"] == pytest.approx(-0.08)
    assert r["gap_final"] == pytest.approx(0.0)


def test_dip_without_recovery():
    def mid(s):
        return base(s) - (0.08 if s > 500 else 0.0)
    assert dip_analysis(_res({"early": [_curve(base)], "mid": [_curve(mid)]}))["mid"]["verdict"] == "dip, no recovery"


def test_a_dip_inside_the_seed_noise_is_not_claimed():
    def late(s):
        return base(s) - (0.02 if 800 < s <= 900 else 0.0)
    res = _res({"early": [_curve(base, 0.05, k) for k in range(3)],
                "late": [_curve(late, 0.05, 10 + k) for k in range(3)]})
    r = dip_analysis(res)["late"]
    assert r["noise"] > 0.02 and r["verdict"] in ("no dip", "dip, no recovery")
