import numpy as np
import pytest

from k25mini.pretrain.fusion_schedule import SCHEDULES, FusionSchedule, schedule_for_share, token_plan


def test_table1_schedules_have_equal_vision_share():
    shares = [s.vision_share for s in SCHEDULES.values()]
    assert shares == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize("steps,tps", [(100, 512), (37, 1000), (10, 7), (1000, 2048)])
def test_plans_consume_identical_totals(steps, tps):
    totals = []
    for s in SCHEDULES.values():
        plan = token_plan(s, steps, tps)
        assert plan.shape == (steps, 2) and plan.dtype == np.int64
        assert (plan >= 0).all() and (plan.sum(1) == tps).all()
        totals.append(tuple(plan.sum(0)))
    assert len(set(totals)) == 1, totals
    assert totals[0][0] == round(steps * tps * 0.1)


def test_no_vision_before_injection_and_uniform_after():
    plan = token_plan(SCHEDULES["late"], 100, 1000)
    assert (plan[:80, 0] == 0).all()
    assert plan[80:, 0].max() - plan[80:, 0].min() <= 1
    assert plan[80:, 0].sum() == 10_000
    early = token_plan(SCHEDULES["early"], 100, 1000)
    assert (early[:, 0] == 100).all()


def test_slider_schedule_keeps_totals():
    ref = token_plan(SCHEDULES["early"], 50, 400).sum(0)
    for p in (0.0, 0.3, 0.5, 0.8, 0.88):
        s = schedule_for_share(p, 0.1)
        np.testing.assert_array_equal(token_plan(s, 50, 400).sum(0), ref)


@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda: FusionSchedule("x", 1.0, 0.1), "inject_at"),
        (lambda: FusionSchedule("x", -0.1, 0.1), "inject_at"),
        (lambda: FusionSchedule("x", 0.2, 1.5), "vision_ratio"),
        (lambda: schedule_for_share(0.95, 0.1), "vision_share"),
        (lambda: token_plan(SCHEDULES["mid"], 0, 10), "steps"),
        (lambda: token_plan(SCHEDULES["mid"], 10, -1), "tokens_per_step"),
    ],
)
def test_bad_arguments(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()
