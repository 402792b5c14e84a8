"""docs/reproduction.md generation from results (synthetic results, temporary folders)."""

from __future__ import annotations

import json

import pytest

from k25mini import report as top_report
from k25mini.experiments.ch05_fusion import report
from k25mini.world import SUITES


def _fake_results(vals: dict[str, list[float]]) -> dict:
    runs, table = [], {}
    for sch, per_seed in vals.items():
        for seed, v in enumerate(per_seed):
            curve = [{"step": s, "tf_TextKnow": v, "tf_TextReason": v / 2, "tf_Code": v / 3} for s in (0, 5, 10)]
            runs.append({"schedule": sch, "seed": seed, "final": {s: v for s in SUITES},
                         "tokens": {"vision": 5, "text": 45},
                         "text_curve": curve, "loss_curve": [[5, 1.0], [10, 0.5]], "timing_s": {"total": 1.0},
                         "torch_threads": 1})
        row = {"seeds": list(range(len(per_seed))), "label": sch, "tokens": {"vision": 5, "text": 45},
               "run_seconds": [1.0] * len(per_seed)}
        for s in SUITES:
            m = sum(per_seed) / len(per_seed)
            row[s] = {"mean": m, "std": 0.01, "values": per_seed}
        table[sch] = row
    cfg = {"preset": "nano", "joint_steps": 10, "rows": 1, "seq_len": 5, "vision_share": 0.1, "eval_items": 2}
    return {"scale": "smoke", "config": cfg, "config_key": "abc", "complete": True, "table": table, "runs": runs,
            "chance": {s: 0.05 for s in SUITES}}


def test_ordering_with_ties():
    t = {"early": {"A": 0.3}, "mid": {"A": 0.2}, "late": {"A": 0.2}}
    assert report.ordering(t, ["A"]) == {"A": "early > mid = late"}
    assert report.ordering({k: report.PAPER_TABLE1[k] for k in report.PAPER_TABLE1})["OCR"] == "early > mid > late"


def test_build_writes_table_figure_and_verdicts(tmp_path):
    res = _fake_results({"early": [0.3, 0.32], "mid": [0.2, 0.22], "late": [0.04, 0.04]})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "fusion_ablation_smoke.json").write_text(json.dumps(res))
    md = top_report.build(tmp_path / "results", tmp_path / "docs", scale="smoke")
    assert (tmp_path / "docs" / "reproduction.md").read_text() == md
    assert (tmp_path / "docs" / "figures" / "fusion_text_curve_smoke.png").stat().st_size > 1000
    assert "| paper early | 0% | 10:90 | 25.8 |" in md
    assert "31.0 ± 1.0" in md  # early mean over its two seeds, in %
    lines = [ln for ln in md.splitlines() if ln.startswith("| OCR |")]
    assert lines and lines[0].endswith("| yes | no |")  # same ordering as the paper; late at/below chance
    assert "seeds [0, 1]" in md
    assert "Chapter 08" in md


def test_build_without_results_says_so(tmp_path):
    md = top_report.build(tmp_path / "none", tmp_path / "docs", scale="smoke")
    assert "No results yet" in md


def test_build_goes_through_the_registry_in_chapter_order(tmp_path, monkeypatch):
    from k25mini.experiments import registry

    fake = registry.Experiment(name="fake", chapter="99", title="t", package="k25mini.experiments",
                               results=(), section="k25mini.experiments.ch08_swarm.report:section",
                               speedrun=None, reproduce=None)
    monkeypatch.setattr(top_report, "EXPERIMENTS", (*registry.EXPERIMENTS, fake))
    md = top_report.build(tmp_path / "none", tmp_path / "docs", scale="smoke")
    assert md.index("## Chapter 05") < md.index("## Chapter 08")
    assert md.count("## Chapter 08") == 2  # the extra entry's section was called too


@pytest.mark.parametrize("bad", [None])
def test_fusion_section_none(bad):
    assert "No results" in report.fusion_section(bad)


def test_probes_listed(tmp_path):
    probes = tmp_path / "results" / "fusion_ablation" / "probes"
    probes.mkdir(parents=True)
    (probes / "more_vision.json").write_text(json.dumps({
        "probe": "more_vision", "schedule": "early", "overrides": {"vision_share": 0.3},
        "final": {s: 0.5 for s in SUITES}, "timing_s": {"total": 12.0}}))
    md = top_report.build(tmp_path / "results", tmp_path / "docs", scale="smoke")
    assert "| more_vision | early, 0 | ? | vision_share=0.3 | 50.0 |" in md


def test_probe_reference_rows_and_archive_follow_the_vit_stage(tmp_path):
    """A probe is shown beside the ablation run that used the same shared stages (current or archived), and an
    archived ablation gets its own Table 1 saying what differs from the current config."""
    results = tmp_path / "results"
    cur = _fake_results({"early": [0.4], "mid": [0.3], "late": [0.2]})
    cur["config"] = dict(cur["config"], vit_steps=1500)
    old = _fake_results({"early": [0.1], "mid": [0.1], "late": [0.1]})
    old["config"], old["config_key"] = dict(old["config"], vit_steps=300), "old"
    (results / "fusion_ablation" / "archive" / "vit300").mkdir(parents=True)
    (results / "fusion_ablation" / "archive" / "vit300" / "fusion_ablation.json").write_text(json.dumps(old))
    (results / "fusion_ablation_smoke.json").write_text(json.dumps(cur))
    probes = results / "fusion_ablation" / "probes"
    probes.mkdir(parents=True)
    (probes / "budget.json").write_text(json.dumps({  # run on the old (300-step) ViT stage
        "probe": "budget", "schedule": "early", "seed": 0, "overrides": {"joint_steps": 20},
        "config": dict(old["config"], joint_steps=20), "final": {s: 0.5 for s in SUITES}, "timing_s": {"total": 3.0}}))
    md = top_report.build(results, tmp_path / "docs", scale="smoke")
    assert "| budget | early, 0 | 300 | joint_steps=20 | 50.0 |" in md
    assert "| *ablation (vit300)* | early, 0 | 300 | none | 10.0 |" in md
    assert "*ablation (current)*" not in md  # the current ablation used another ViT stage
    assert "**vit300** (key `old`" in md and "vit_steps=300" in md
    assert "| early | 10.0 ± 1.0 |" in md
    old["note"] = "Replaced because the stages were retrained."  # an archive may say why it was kept
    (results / "fusion_ablation" / "archive" / "vit300" / "fusion_ablation.json").write_text(json.dumps(old))
    md = report.archive_section(results, cur)
    assert "vit_steps=300)\n\nReplaced because the stages were retrained.\n\n| schedule |" in md


def test_diagnostics_section(tmp_path):
    assert report.diagnostics_section(tmp_path) == ""
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    r = {"matched": 0.5, "mismatched": 0.75, "gap": 0.25, "n_items": 4, "n_tokens": 40}
    (d / "diagnostics_cpu.json").write_text(json.dumps({
        "stage_B": {"1500": {"stage_key": "k", "captions": r}, "300": {"stage_key": "j", "captions": None}},
        "joint": {"early-s0": {"config_key": "c", "VisReason": r}}}))
    md = report.diagnostics_section(tmp_path)
    assert md.index("| 300 steps | – |") < md.index("| 1500 steps | 0.50 / 0.75 (+0.25) |")
    assert "| early-s0 | 0.50 / 0.75 (+0.25) |" in md


def test_skill_tables_only_when_every_row_has_them():
    res = _fake_results({"early": [0.3, 0.32], "late": [0.1, 0.1]})
    assert report.skill_lines(res) == []  # older results: no per-skill scores
    res["chance_by_skill"] = {"VisReason": {"count": 0.25, "box": 0.02}, "OCR": {"ocr": 0.06}}
    for row in res["table"].values():
        row["by_skill"] = {"VisReason": {"count": {"mean": 0.5, "std": 0.1}, "box": {"mean": 0.0, "std": 0.0}},
                           "OCR": {"ocr": {"mean": 0.1, "std": 0.0}}}
    md = "\n".join(report.skill_lines(res))
    assert "**VisReason by skill**" in md and "OCR by skill" not in md  # one-skill suites are not split
    assert "| early | 50.0 ± 10.0 | 0.0 ± 0.0 |" in md and "| chance | 25.0 | 2.0 |" in md
    del res["table"]["late"]["by_skill"]
    assert report.skill_lines(res) == []


def test_skills_section(tmp_path):
    assert report.skills_section(tmp_path) == ""
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    row = {"config_key": None, "checkpoint": "x", "count": {"score": 0.5, "chance": 0.25, "n": 40},
           "box": {"score": 0.0, "chance": 0.01, "n": 40}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"skills": {"VisReason": {"early-s0": row}}}))
    md = report.skills_section(tmp_path)
    assert "--skills 40" in md and "| early-s0 | 50 (25) | 0 (1) | **25.0** | 13.0 |" in md
    assert "text twin" not in md  # no TextReason rows yet
    twin = {"config_key": None, "checkpoint": "x", "count_list": {"score": 0.75, "chance": 0.25, "n": 40}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"skills": {"VisReason": {"early-s0": row},
                                                                   "TextReason": {"early-s0": twin}}}))
    md = report.skills_section(tmp_path)
    assert "| model | count / count_list |" in md and "| early-s0 | +25 / +50 |" in md


def test_skills_section_answer_concentration(tmp_path):
    """Rows with the answer-concentration fields get a second table: top answer, its share, best constant."""
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    row = {"config_key": None, "checkpoint": "x",
           "count": {"score": 0.5, "chance": 0.25, "n": 40, "top_answer": "1", "top_share": 0.925,
                     "best_constant": 0.45},
           "box": {"score": 0.0, "chance": 0.01, "n": 40, "top_answer": "1 1 1 1 10 10|x", "top_share": 0.15,
                   "best_constant": 0.03}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"skills": {"VisReason": {"early-s0": row}}}))
    md = report.skills_section(tmp_path)
    assert "| early-s0 | `1` 92% (45) | `1 1 1 1 10…` 15% (3) |" in md, md
    del row["box"]["top_share"]  # an older row without the fields: no second table
    (d / "diagnostics_cpu.json").write_text(json.dumps({"skills": {"VisReason": {"early-s0": row}}}))
    assert "best *constant*" not in report.skills_section(tmp_path)


def test_fields_section(tmp_path):
    assert report.fields_section(tmp_path) == ""
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    cell = lambda a, b, n: {"acc": a, "blind": b, "n": n}  # noqa: E731
    rows = {"early-s0": {"config_key": "k", "checkpoint": "x", "n_rows": 50,
                         "caption_scene": {"count": cell(0.7, 0.7, 90), "shape": cell(0.2, 0.1, 90)}},
            "B1 (own decoder)": {"stage_key": "b", "checkpoint": "y", "n_rows": 50,
                                 "caption_scene": {"count": cell(0.68, 0.7, 90)},
                                 "chart_caption": {"value": cell(0.25, 0.11, 200)}}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"fields": rows}))
    md = report.fields_section(tmp_path)
    assert "`--fields 50`" in md and "| caption fact | B1 (own decoder) | early-s0 |" in md, md
    assert "| caption_scene · count (n=90) | 68 (70) | 70 (70) |" in md
    assert "| caption_scene · shape (n=90) | – | 20 (10) |" in md
    assert "| chart_caption · value (n=200) | 25 (11) | – |" in md


def test_vision_probe_section(tmp_path):
    assert report.vision_probe_section(tmp_path) == ""
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    r = lambda f, p, c: {"flat": f, "pooled": p, "chance": c}  # noqa: E731
    rows = {"early-s0": {"n": 1600, "cell": r(0.9, 0.2, 1 / 9), "shape": r(0.3, 0.5, 0.125),
                         "colour": r(1.0, 1.0, 0.125)},
            "untrained (A)": {"n": 1600, "cell": r(0.93, 0.64, 1 / 9), "shape": r(0.3, 0.41, 0.125),
                              "colour": r(0.9, 0.95, 0.125)}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"vision_probe": rows}))
    md = report.vision_probe_section(tmp_path)
    assert "`--vision-probe 1600`" in md
    assert md.index("| untrained (A) | 93 | 64 |") < md.index("| early-s0 | 90 | 20 | 30 | 50 | 100 | 100 |")
    assert "| chance | 11 | 11 | 12 | 12 | 12 | 12 |" in md


def test_vision_budget_section(tmp_path):
    assert report.vision_budget_section(tmp_path) == ""
    d = tmp_path / "fusion_ablation"
    (d / "probes").mkdir(parents=True)
    f = lambda k, r, o: {"VisKnow": k, "VisReason": r, "OCR": o}  # noqa: E731
    row = lambda mix, n, seed, tok, fin: {"mix": mix, "steps": n, "seed": seed, "tokens": tok, "final": fin}  # noqa: E731
    rows = {"reason-100-s0": row("reason", 100, 0, 90000, f(0.0, 0.30, 0.05)),
            "all-100-s0": row("all", 100, 0, 84000, f(0.10, 0.20, 0.08)),
            "all-100-s1": row("all", 100, 1, 86000, f(0.20, 0.30, 0.10)),
            "B1 (own decoder)": row("B1", 1500, 0, 900000, f(0.2, 0.1, 0.11))}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"vision_budget": rows, "best_constant": f(0.07, 0.12, 0.13)}))
    md = report.vision_budget_section(tmp_path)
    assert md.rstrip().endswith("| blind (best constant answer per kind of question) | | | | 7.0 | 12.0 | 13.0 |")
    assert "| all | 100 | 2 | 85 | 15.0 (10.0–20.0) | 25.0 (20.0–30.0) | 9.0 (8.0–10.0) |" in md, md
    assert md.index("| all | 100 |") < md.index("| reason | 100 | 1 | 90 | 0.0 | 30.0 | 5.0 |")
    assert "joint early" not in md  # no ablation given
    b1 = "| *B1, own decoder (ViT-stage rows)* | 1500 | 1 | 900 | 20.0 | 10.0 | 11.0 |"
    assert md.index("| reason | 100 |") < md.index(b1)
    res = _fake_results({"early": [0.1, 0.3], "late": [0.2, 0.2]})
    res["config"]["joint_steps"] = 1000
    for r in res["runs"]:
        r["tokens"] = {"vision": 102400, "text": 921600}
    probe = {"probe": "budget2x_early", "schedule": "early", "overrides": {"joint_steps": 2000},
             "tokens": {"vision": 204800, "text": 1843200}, "final": f(0.15, 0.30, 0.09)}
    (d / "probes" / "budget2x_early.json").write_text(json.dumps(probe))
    (d / "probes" / "other.json").write_text(json.dumps({**probe, "overrides": {"proj_lr": 0.01}}))
    md = report.vision_budget_section(tmp_path, res=res)
    spread = " | ".join(["20.0 (10.0–30.0)"] * 3)
    assert f"| *joint early (Table 1, + 922k text)* | 1000 | 2 | 102 | {spread} |" in md
    assert "| *probe budget2x_early (early, + 1843k text)* | 2000 | 1 | 205 | 15.0 | 30.0 | 9.0 |" in md
    assert md.count("probe ") == 1 and "| chance | | | | 5.0 | 5.0 | 5.0 |" in md


def test_blind_baseline_row_and_column(tmp_path):
    res = _fake_results({"early": [0.1, 0.3], "late": [0.06, 0.06]})
    assert report.blind_baseline(tmp_path, res) is None  # nothing measured
    d = tmp_path / "fusion_ablation"
    d.mkdir()
    const = {"config_key": "abc", **{s: 0.08 for s in SUITES}}
    (d / "diagnostics_cpu.json").write_text(json.dumps({"best_constant": const}))
    blind = report.blind_baseline(tmp_path, res)
    assert blind == {s: 0.08 for s in SUITES}
    assert report.blind_baseline(tmp_path, {**res, "config_key": "other"}) is None  # other eval items
    md = report.fusion_section(res, blind=blind)
    row = "| blind (best constant answer per kind of question) | | | " + " | ".join(["8.0"] * len(SUITES)) + " | |"
    assert row in md
    # late's 6.0 beats chance (5.0) but not the blind baseline (8.0)
    assert f"| {SUITES[0]} | " in md and "| yes | no |" in md, md
    assert "blind" not in report.fusion_section(res)
