"""Chapter 05's section of docs/reproduction.md, generated from results/ (never typed by hand).

The paper's Table 1 beside ours (mean ± sample std over seeds, every replicate, chance and blind baselines),
whether the paper's ordering holds suite by suite, the text-score-over-time figure, and the checks' tables.
:func:`section` is what the experiments registry calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from k25mini.experiments.ch05_fusion.evaluation import PACKAGE, load_results
from k25mini.experiments.results import ROOT, staleness
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.world import SUITE_SKILLS, SUITES, TWINS

__all__ = ["PAPER_TABLE1", "fusion_section", "pairwise_lines", "probes_section", "text_curve_figure", "ordering",
           "archived_ablations", "archive_section", "dev_section", "diagnostics_section", "skill_lines",
           "skills_section", "section"]


# K2.5 report, Table 1 (paper_facts §5): fixed vision+text budget
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "early": {"VisKnow": 25.8, "VisReason": 43.8, "OCR": 65.7, "TextKnow": 45.5, "TextReason": 58.5, "Code": 24.8},
    "mid": {"VisKnow": 25.0, "VisReason": 40.7, "OCR": 64.1, "TextKnow": 43.9, "TextReason": 58.6, "Code": 24.0},
    "late": {"VisKnow": 24.2, "VisReason": 39.0, "OCR": 61.5, "TextKnow": 43.1, "TextReason": 57.8, "Code": 24.0},
}
PAPER_SETUP = {"early": ("0%", "10:90"), "mid": ("50%", "20:80"), "late": ("80%", "50:50")}
TEXT_KEYS = ("tf_TextKnow", "tf_TextReason", "tf_Code")
#: the dev probes' stamp (= ``ch05_fusion.dev.PACKAGE``; named here so that the report imports no training code)
DEV_PACKAGE = "k25mini.experiments.ch05_fusion.dev"


def ordering(table: dict[str, dict[str, float]], suites=SUITES, tie: float = 1e-9) -> dict[str, str]:
    """Per suite, the schedules sorted best-first (``"early > mid > late"``); values closer than ``tie``
    are shown as equal (``=``)."""
    out = {}
    for s in suites:
        items = sorted(((table[k][s], k) for k in table), key=lambda t: -t[0])
        txt = items[0][1]
        for (prev, _), (v, k) in zip(items, items[1:]):
            txt += (" = " if abs(prev - v) < tie else " > ") + k
        out[s] = txt
    return out


def _curves(res: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """schedule -> (steps, mean over seeds of the mean text score, std over seeds)."""
    out = {}
    for sch in res["table"]:
        runs = [r for r in res["runs"] if r["schedule"] == sch]
        steps = [p["step"] for p in runs[0]["text_curve"]]
        vals = np.array([[np.mean([p[k] for k in TEXT_KEYS]) for p in r["text_curve"]] for r in runs
                         if [p["step"] for p in r["text_curve"]] == steps])
        out[sch] = (np.array(steps), vals.mean(0), vals.std(0, ddof=1) if len(vals) > 1 else np.zeros(len(steps)))
    return out


def text_curve_figure(res: dict[str, Any], path: Path | None = None):
    """Mean text-suite score (teacher-forced exact match) over joint training, one line per schedule;
    dashed verticals mark where vision enters. Saved to ``path`` if given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from k25mini.pretrain.fusion_schedule import SCHEDULES

    fig, ax = plt.subplots(figsize=(7, 3.8))
    steps_total = res["config"]["joint_steps"]
    colours = {"early": "tab:blue", "mid": "tab:orange", "late": "tab:green"}
    for sch, (x, m, sd) in _curves(res).items():
        c = colours.get(sch)
        ax.plot(x, 100 * m, label=SCHEDULES[sch].label, color=c)
        ax.fill_between(x, 100 * (m - sd), 100 * (m + sd), alpha=0.15, color=c)
        p = SCHEDULES[sch].inject_at
        if p > 0:
            ax.axvline(p * steps_total, ls="--", lw=0.8, color=c)
    ax.set_xlabel("joint pre-training step")
    ax.set_ylabel("text suites, exact match (%)")
    ax.set_title("Text score during joint pre-training (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def dip_analysis(res: dict[str, Any], window: float = 0.2, min_effect: float = 0.01) -> dict[str, dict[str, Any]]:
    """Dip-and-recover, with the stage-transition dip separated out (mean text-suite score, seed means).

    Every schedule's text score moves when the joint stage starts (new data mix, new learning-rate warm-up),
    late included, so a dip right after *injection* is only the vision data's doing if it shows **relative to
    the early schedule** (vision from step 0, same steps, same data order per seed). Per schedule: the
    transition (score at step 0 -> first tracked step) and, for a schedule that injects at step ``t``, the
    gap ``d = sched - early`` just before ``t``, its lowest value within ``window`` of the budget after ``t``,
    and at the end. ``noise`` is the larger seed std of the two curves over that window, at least
    ``min_effect`` (one point: the tracked suites' resolution is a few items).
    ``verdict`` is ``"dip-and-recover"`` only when the gap falls by more than the noise after injection
    and climbs back by more than the noise by the end; else ``"dip, no recovery"``, ``"no dip"`` or
    ``"no injection"``."""
    from k25mini.pretrain.fusion_schedule import SCHEDULES

    curves = _curves(res)
    total = res["config"]["joint_steps"]
    out: dict[str, dict[str, Any]] = {}
    early = curves.get("early")
    for sch, (x, m, sd) in curves.items():
        row: dict[str, Any] = {"transition": [float(m[0]), float(m[1])] if len(m) > 1 else None}
        p = SCHEDULES[sch].inject_at if sch in SCHEDULES else 0.0
        if p == 0 or early is None or not np.array_equal(early[0], x):
            row["verdict"] = "no injection" if p == 0 else "no early curve to compare with"
            out[sch] = row
            continue
        t = p * total
        d = m - early[1]
        pre_i = np.nonzero(x <= t)[0]
        win = np.nonzero((x > t) & (x <= t + window * total))[0]
        if len(pre_i) == 0 or len(win) == 0:
            row["verdict"] = "curve too coarse"
            out[sch] = row
            continue
        pre, low, final = float(d[pre_i[-1]]), float(d[win].min()), float(d[-1])
        idx = np.concatenate([pre_i[-1:], win])
        noise = float(max(sd[idx].max(), early[2][idx].max(), min_effect))
        row.update(inject_step=t, gap_before=pre, gap_lowest=low, gap_final=final, noise=noise)
        if pre - low <= noise:
            row["verdict"] = "no dip"
        elif final - low > noise:
            row["verdict"] = "dip-and-recover"
        else:
            row["verdict"] = "dip, no recovery"
        out[sch] = row
    return out


def _dip(res: dict[str, Any]) -> dict[str, str]:
    """One line per schedule for the report (see :func:`dip_analysis`)."""
    out = {}
    for sch, r in dip_analysis(res).items():
        tr = r.get("transition")
        txt = f"joint-stage start {100 * tr[0]:.1f} -> {100 * tr[1]:.1f}" if tr else "no curve"
        if "gap_before" in r:
            txt += (f"; gap to early just before injection (step {r['inject_step']:.0f}) {100 * r['gap_before']:+.1f}, "
                    f"lowest after {100 * r['gap_lowest']:+.1f}, final {100 * r['gap_final']:+.1f} "
                    f"(seed noise {100 * r['noise']:.1f})")
        out[sch] = f"{txt}: **{r['verdict']}**"
    return out


def blind_baseline(results_dir: Path, res: dict[str, Any] | None, scale: str = "cpu") -> dict[str, float] | None:
    """Each suite's blind baseline (the best constant answer per kind of question, written by ``--blind`` and the
    vision-budget check) when it was measured on the eval items of ``res``'s config, else None."""
    if res is not None and isinstance(res.get("blind"), dict) and all(s in res["blind"] for s in SUITES):
        return {s: res["blind"][s] for s in SUITES}  # computed with the table (results from issue #15 on)
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    const = json.loads(p.read_text()).get("best_constant") if p.is_file() else None
    if res is None or not const or const.get("config_key") != res.get("config_key"):
        return None
    return {s: const[s] for s in SUITES if s in const} if all(s in const for s in SUITES) else None


def fusion_section(res: dict[str, Any] | None, figure_rel: str | None = None,
                   blind: dict[str, float] | None = None) -> str:
    """Markdown for chapter 05 from the aggregated ``results/fusion_ablation.json``; ``blind``: each suite's blind
    baseline (:func:`blind_baseline`), shown under chance when given."""
    lines = ["## Chapter 05 — early fusion: Table 1 (fixed vision + text budget)", ""]
    if res is None:
        return "\n".join(lines + ["*No results yet: run `python -m k25mini.experiments.ch05_fusion`.*", ""])
    if res.get("stale"):
        lines += [f"> **{res['stale']}**", ""]
    if res.get("stale_runs"):
        lines += [f"> **Runs made by other code than the current one: {', '.join(res['stale_runs'])}.**", ""]
    cfg = res["config"]
    table = res["table"]
    seeds = sorted({s for row in table.values() for s in row["seeds"]})
    lines += [
        f"Scale `{res['scale']}`, model preset `{cfg['preset']}`, results key `{res['config_key']}`"
        f"{'' if res['complete'] else ' (**incomplete: some runs missing**)'}; seeds {seeds} "
        f"(a seed changes the joint stage's data order; stages A and B are shared). Joint budget "
        f"{cfg['joint_steps']} steps × {cfg['rows']}×{cfg['seq_len']} tokens "
        f"= {cfg['joint_steps'] * cfg['rows'] * cfg['seq_len']:,} tokens, vision share {cfg['vision_share']:.0%}. "
        f"Scores in %, mean ± sample std over seeds; final scores by greedy generation on "
        f"{cfg['eval_items']} held-out items per suite.",
        "",
        "| fusion | inject at | V:T | " + " | ".join(SUITES) + " | vision / text tokens |",
        "|---|---|---|" + "---|" * len(SUITES) + "---|",
    ]
    for sch in ("early", "mid", "late"):
        if sch in PAPER_TABLE1:
            at, vt = PAPER_SETUP[sch]
            lines.append(f"| paper {sch} | {at} | {vt} | " + " | ".join(f"{PAPER_TABLE1[sch][s]:.1f}" for s in SUITES)
                         + " | — |")
    for sch, row in table.items():
        at, vt = PAPER_SETUP.get(sch, ("?", "?"))
        cells = [f"{100 * row[s]['mean']:.1f} ± {100 * row[s]['std']:.1f}" for s in SUITES]
        tok = row["tokens"]
        lines.append(f"| **ours {sch}** (n={len(row['seeds'])}) | {at} | {vt} | " + " | ".join(cells)
                     + f" | {tok['vision']:,} / {tok['text']:,} |")
    lines.append("| chance | | | " + " | ".join(f"{100 * res['chance'][s]:.1f}" for s in SUITES) + " | |")
    if blind is not None:
        lines.append("| blind (best constant answer per kind of question) | | | "
                     + " | ".join(f"{100 * blind[s]:.1f}" for s in SUITES) + " | |")
    lines.append("")
    ours = {k: {s: row[s]["mean"] for s in SUITES} for k, row in table.items()}
    if len(ours) > 1:
        paper_order = ordering({k: PAPER_TABLE1[k] for k in ours if k in PAPER_TABLE1})
        our_order = ordering(ours, tie=5e-4)  # equal at the table's precision (0.1 %)
        extra = " beats the blind baseline (all schedules) |" if blind is not None else ""
        lines += ["**Ordering per suite** (best first, by the mean over seeds):", "",
                  "| suite | paper | ours | same | beats chance (all schedules) |" + extra,
                  "|---|---|---|---|---|" + ("---|" if blind is not None else "")]
        for s in SUITES:
            beats = all(row[s]["mean"] > res["chance"][s] for row in table.values())
            row_md = (f"| {s} | {paper_order[s]} | {our_order[s]} | "
                      f"{'yes' if paper_order[s] == our_order[s] else 'no'} | {'yes' if beats else 'no'} |")
            if blind is not None:
                row_md += f" {'yes' if all(r[s]['mean'] > blind[s] for r in table.values()) else 'no'} |"
            lines.append(row_md)
        lines.append("")
        lines += skill_lines(res)
        lines += pairwise_lines(res)
        lines += ["Per-seed values (for judging the spread):", ""]
        for sch, row in table.items():
            vals = "; ".join(f"{s} " + ", ".join(f"{100 * v:.1f}" for v in row[s]["values"]) for s in SUITES)
            lines.append(f"- {sch} (seeds {row['seeds']}): {vals}")
        lines.append("")
    if figure_rel is not None:
        lines += [f"![text score over joint training]({figure_rel})", ""]
    lines += ["**Dip-and-recover** (mean text-suite teacher-forced exact match, seed means; every schedule moves "
              "when the joint stage starts, so a dip after injection is measured as the gap to the early schedule):",
              ""]
    lines += [f"- {sch}: {txt}" for sch, txt in _dip(res).items()]
    lines += ["", "Per-run timings (s): " + "; ".join(
        f"{sch} " + ", ".join(f"{t:.0f}" for t in row["run_seconds"]) for sch, row in table.items()), ""]
    return "\n".join(lines)


def skill_lines(res: dict[str, Any]) -> list[str]:
    """Per-skill tables (mean ± std over seeds) for the suites made of several skills, with each skill's chance:
    a suite mean near chance can hide one learned skill among unlearned ones."""
    table, chance = res["table"], res.get("chance_by_skill")
    if chance is None or not all("by_skill" in row for row in table.values()):
        return []
    out: list[str] = []
    for suite in SUITES:
        skills = list(chance.get(suite, {}))
        if len(skills) < 2:
            continue
        out += [f"**{suite} by skill** (%, ~{res['config']['eval_items'] // len(skills)} items per skill):", "",
                "| schedule | " + " | ".join(skills) + " |", "|---|" + "---|" * len(skills)]
        for sch, row in table.items():
            by = row["by_skill"][suite]
            out.append(f"| {sch} | " + " | ".join(f"{100 * by[k]['mean']:.1f} ± {100 * by[k]['std']:.1f}"
                                                  for k in skills) + " |")
        out += ["| chance | " + " | ".join(f"{100 * chance[suite][k]:.1f}" for k in skills) + " |", ""]
    return out


def pairwise_lines(res: dict[str, Any]) -> list[str]:
    """Early against each later schedule: on how many suites early is ahead, and by how many seed-stds."""
    table = res["table"]
    if "early" not in table:
        return []
    out = ["**Early against later fusion** (difference of means in points; in brackets, in units of the larger "
           "of the two seed stds):", ""]
    for sch in table:
        if sch == "early":
            continue
        diffs = []
        for s in SUITES:
            d = table["early"][s]["mean"] - table[sch][s]["mean"]
            sd = max(table["early"][s]["std"], table[sch][s]["std"], 1e-9)
            diffs.append(f"{s} {100 * d:+.1f} ({d / sd:+.1f})")
        ahead = sum(table["early"][s]["mean"] > table[sch][s]["mean"] for s in SUITES)
        out.append(f"- early − {sch}: early ahead on {ahead}/6 suites: " + ", ".join(diffs))
    return [*out, ""]


#: config fields added after results were first written, with the value those older results ran with
LEGACY_CONFIG = {"data_version": 1, "vit_align": "frozen", "proj_steps": 0, "proj_lr": None}


def _config(r: dict[str, Any]) -> dict[str, Any]:
    """A result's config with the fields it predates filled in (so that older results compare correctly)."""
    return {**LEGACY_CONFIG, **r.get("config", {})}


def _vit_steps(r: dict[str, Any]) -> Any:
    return r.get("config", {}).get("vit_steps", "?")


def archived_ablations(results_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Earlier complete ablations kept for comparison: ``archive/<name>/fusion_ablation.json`` under the results."""
    root = results_dir / "fusion_ablation" / "archive"
    return [(p.parent.name, json.loads(p.read_text())) for p in sorted(root.glob("*/fusion_ablation.json"))]


def archive_section(results_dir: Path, res: dict[str, Any] | None = None) -> str:
    """Table 1 of each archived ablation (mean ± std), with what differs from the current config."""
    arch = archived_ablations(results_dir)
    if not arch:
        return ""
    lines = ["### Earlier ablations (kept in `results/fusion_ablation/archive/`)", ""]
    for name, a in arch:
        cur = _config(res) if res is not None else {}
        diff = {k: v for k, v in _config(a).items() if res is None or cur.get(k) != v}
        seeds = sorted({r["seed"] for r in a.get("runs", [])})
        lines += [f"**{name}** (key `{a['config_key']}`, seeds {seeds}; differs from the current "
                  f"config in: {', '.join(f'{k}={v}' for k, v in diff.items()) or 'nothing'})", "",
                  *([a["note"], ""] if a.get("note") else []),
                  "| schedule | " + " | ".join(SUITES) + " |", "|---|" + "---|" * len(SUITES)]
        for sch, row in a["table"].items():
            lines.append(f"| {sch} | " + " | ".join(f"{100 * row[s]['mean']:.1f} ± {100 * row[s]['std']:.1f}"
                                                 for s in SUITES) + " |")
        lines.append("| chance | " + " | ".join(f"{100 * a['chance'][s]:.1f}" for s in SUITES) + " |")
        lines.append("")
    return "\n".join(lines)


def probes_section(results_dir: Path, res: dict[str, Any] | None = None) -> str:
    """The investigation runs (``results/fusion_ablation/probes/*.json``). Reference rows: the ablation run of
    the same schedule and seed that used the same ViT stage (the current ablation ``res`` or an archived one)."""
    files = sorted((results_dir / "fusion_ablation" / "probes").glob("*.json"))
    if not files:
        return ""
    lines = ["### Investigations (single runs, one change each against an ablation run)", "",
             "| probe | schedule, seed | ViT-stage steps | change | " + " | ".join(SUITES) + " | run (s) |",
             "|---|---|---|---|" + "---|" * len(SUITES) + "---|"]
    probes = [json.loads(f.read_text()) for f in files]
    refs = ([("current", res)] if res is not None else []) + archived_ablations(results_dir)
    seen = set()
    for r in probes:
        base = {k: v for k, v in _config(r).items() if k not in r.get("overrides", {}) and k != "seeds"}
        for name, a in refs:
            same = all(_config(a).get(k) == v for k, v in base.items())
            key = (name, r["schedule"], r.get("seed", 0))
            if not same or key in seen:
                continue
            for run in a.get("runs", []):
                if run["schedule"] == r["schedule"] and run["seed"] == r.get("seed", 0):
                    seen.add(key)
                    lines.append(f"| *ablation ({name})* | {run['schedule']}, {run['seed']} | {_vit_steps(a)} | "
                                 "none | " + " | ".join(f"{100 * run['final'][s]:.1f}" for s in SUITES)
                                 + f" | {run['timing_s']['total']:.0f} |")
    for r in probes:
        change = ", ".join(f"{k}={v}" for k, v in r.get("overrides", {}).items())
        lines.append(f"| {r.get('probe', '?')} | {r['schedule']}, {r.get('seed', 0)} | {_vit_steps(r)} | {change} | "
                     + " | ".join(f"{100 * r['final'][s]:.1f}" for s in SUITES) + f" | {r['timing_s']['total']:.0f} |")
    old = [r.get("probe", "?") for r in probes if staleness(r, PACKAGE)]
    if old:
        lines += ["", f"*{len(old)} of {len(probes)} probes were made by other code than the current one (STALE: "
                  "earlier results schema or another code version); they record what that code measured and are "
                  "not regenerated.*"]
    return "\n".join([*lines, ""])


def dev_section(results_dir: Path) -> str:
    """The dev probes (``results/fusion_ablation/dev/*.json``, ``python -m k25mini.experiments.ch05_fusion.dev``):
    scores on train-side dev items, for choosing designs; never claims."""
    files = sorted((results_dir / "fusion_ablation" / "dev").glob("*.json"))
    if not files:
        return ""
    probes = [json.loads(f.read_text()) for f in files]
    suites = [s for s in SUITES if any(s in r["final"] for r in probes)]
    skills = sorted({k for r in probes for k in r["final_by_skill"].get("VisReason", {})},
                    key=lambda k: SUITE_SKILLS["VisReason"].index(k) if k in SUITE_SKILLS["VisReason"] else 99)
    lines = ["### Dev probes (train-side items, for choosing designs; not held-out results)", "",
             "Scored on fresh items from the train side of the world's split (tag `ch05-dev`), never on held-out "
             "items; trained without the held-out text tracking. VisReason and Code dev items are new scenes and "
             "programs; OCR and TextReason dev items come from smaller pools and may repeat training items "
             "(`k25mini/experiments/ch05_fusion/dev.py`). In brackets: the best constant answer per kind of "
             "question on the same dev items.", "",
             "| probe | schedule, seed | change | items | " + " | ".join(suites) + " | "
             + " | ".join(f"VisReason: {k}" for k in skills) + " | train (s) |",
             "|---|---|---|---|" + "---|" * (len(suites) + len(skills)) + "---|"]
    for r in probes:
        change = ", ".join([*(f"{k}={v}" for k, v in r.get("overrides", {}).items()),
                            *(f"{k}×{v:g}" for k, v in (r.get("vision_mix") or {}).items()),
                            *([f"LM width {r['lm_width']}"] if r.get("lm_width") else [])]) or "none"
        cells = [f"{100 * r['final'][s]:.1f} ({100 * r['blind'][s]:.1f})" if s in r["final"] else "–" for s in suites]
        by = r["final_by_skill"].get("VisReason", {})
        cells += [f"{100 * by[k]:.1f}" if k in by else "–" for k in skills]
        tr = r["timing_s"].get("train")
        lines.append(f"| {r['probe']} | {r['schedule']}, {r['seed']} | {change} | {r['dev_items']} | "
                     + " | ".join(cells) + f" | {'reused' if tr is None else f'{tr:.0f}'} |")
    old = [r["probe"] for r in probes if staleness(r, DEV_PACKAGE)]
    if old:
        lines += ["", f"*STALE (made by other code than the current one): {', '.join(old)}.*"]
    return "\n".join([*lines, ""])


def diagnostics_section(results_dir: Path, scale: str = "cpu") -> str:
    """``results/fusion_ablation/diagnostics_<scale>.json`` as tables: does the model read the image?"""
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    if not p.is_file():
        return ""
    d = json.loads(p.read_text())

    def cell(r: dict[str, Any] | None) -> str:
        return "–" if not r else f"{r['matched']:.2f} / {r['mismatched']:.2f} ({r['gap']:+.2f})"

    lines = ["### Does the model read the image? (`python -m k25mini.experiments.ch05_fusion --diagnose ...`)", "",
             "Loss (nats/token) of the text after an image with its own image / with another same-sized image "
             "(gap): a gap of 0 means the image is ignored.", ""]
    if d.get("stage_B"):
        cols = sorted({k for row in d["stage_B"].values() for k in row if k != "stage_key"})
        lines += ["| ViT stage (caption documents) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for v, row in sorted(d["stage_B"].items(), key=lambda kv: (int(kv[0].split()[0]), kv[0])):
            lines.append(f"| {v.replace(' ', ' steps ', 1) if ' ' in v else v + ' steps'} | "
                         + " | ".join(cell(row.get(c)) for c in cols) + " |")
        lines.append("")
    if d.get("joint"):
        cols = sorted({k for row in d["joint"].values() for k in row if k != "config_key"})
        lines += ["| joint run (held-out suites) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name, row in d["joint"].items():
            lines.append(f"| {name} | " + " | ".join(cell(row.get(c)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def _run_order(name: str) -> tuple:
    """The current ablation's runs first (early, mid, late; by seed), then every other model by name."""
    sch, _, seed = name.partition("-s")
    if sch in PAPER_SETUP and seed.isdigit():
        return (0, list(PAPER_SETUP).index(sch), int(seed), "")
    return (1, 0, 0, name)


def _short(answer: str, n: int = 12) -> str:
    a = answer.replace("|", "/").replace("`", "'")
    return a if len(a) <= n else a[: n - 1].rstrip() + "…"


def skills_section(results_dir: Path, scale: str = "cpu") -> str:
    """Per-skill check (``--skills N``) from the diagnostics JSON: score per skill with its chance, many items each."""
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    rows = json.loads(p.read_text()).get("skills", {}) if p.is_file() else {}
    lines: list[str] = []
    for suite, models in rows.items():
        skills = [k for k, v in next(iter(models.values())).items() if isinstance(v, dict)]
        n = next(iter(models.values()))[skills[0]]["n"]
        lines += [f"### {suite} skill by skill (`--skills {n}`: {n} fresh held-out items per skill, greedy; "
                  "in brackets: chance)", "",
                  "| model | " + " | ".join(skills) + " | mean | mean chance |", "|---|" + "---|" * (len(skills) + 2)]
        for name, row in sorted(models.items(), key=lambda kv: _run_order(kv[0])):
            sc = [row[k]["score"] for k in skills]
            ch = [row[k]["chance"] for k in skills]
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.0f} ({100 * b:.0f})" for a, b in zip(sc, ch))
                         + f" | **{100 * sum(sc) / len(sc):.1f}** | {100 * sum(ch) / len(ch):.1f} |")
        lines.append("")
        blind = {m: r for m, r in models.items() if all("top_share" in r[k] for k in skills)}
        if blind:
            lines += [f"Is the {suite} answer read off the input? Each model's most frequent answer per skill with its "
                      "share of the items, and in brackets the score of the best *constant* answer (what a model "
                      "that ignores the input can reach from the answer prior alone):", "",
                      "| model | " + " | ".join(skills) + " |", "|---|" + "---|" * len(skills)]
            for name, row in sorted(blind.items(), key=lambda kv: _run_order(kv[0])):
                lines.append(f"| {name} | " + " | ".join(
                    f"`{_short(row[k]['top_answer'])}` {100 * row[k]['top_share']:.0f}% "
                    f"({100 * row[k]['best_constant']:.0f})" for k in skills) + " |")
            lines.append("")
    vis, txt = rows.get("VisReason", {}), rows.get("TextReason", {})
    pairs = [(v, t) for v, t in TWINS.items() if vis and v in next(iter(vis.values()))]
    both = sorted((m for m in vis if m in txt), key=_run_order)
    if both and pairs:
        lines += ["**Each visual skill beside its text twin** (the same question about a scene written out as "
                  "text; score − chance in points): a visual skill can only be as good as the language model "
                  "is at the same task in text.", "",
                  "| model | " + " | ".join(f"{v} / {t}" for v, t in pairs) + " |", "|---|" + "---|" * len(pairs)]
        for m in both:
            cells = []
            for v, t in pairs:
                a, b = vis[m][v], txt[m].get(t)
                gain = lambda r: 100 * (r["score"] - r["chance"])  # noqa: E731
                cells.append(f"{gain(a):+.0f} / {gain(b):+.0f}" if b else f"{gain(a):+.0f} / –")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _fields_order(name: str) -> tuple:
    return (0, name == "B", 0, 0, "") if name.startswith("B") else (1, *_run_order(name))


def fields_section(results_dir: Path, scale: str = "cpu") -> str:
    """Perception check (``--fields N``) from the diagnostics JSON: caption facts read off the image, per model."""
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    rows = json.loads(p.read_text()).get("fields", {}) if p.is_file() else {}
    if not rows:
        return ""
    models = sorted(rows, key=_fields_order)
    facts = sorted({(sk, k) for m in models for sk, r in rows[m].items() if isinstance(r, dict) for k in r})
    n = rows[models[0]].get("n_rows", "?")
    lines = [f"### What is read off the pixels (`--fields {n}`: unseen caption rows, {n} per ViT corpus)", "",
             "Each fact of a caption (colour, shape, count, grid cell, box coordinate, bar value, motion, name), "
             "teacher-forced: the share the model writes exactly right after the true text before it, with the "
             "document's own image and, in brackets, with another image of the same size (what the text before the "
             "fact gives away). Own well above other = the fact is perceived.", "",
             "| caption fact | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for sk, k in facts:
        cells = []
        for m in models:
            r = rows[m].get(sk, {}).get(k) if isinstance(rows[m].get(sk), dict) else None
            cells.append(f"{100 * r['acc']:.0f} ({100 * r['blind']:.0f})" if r else "–")
        lines.append(f"| {sk} · {k} (n={max(rows[m][sk][k]['n'] for m in models if k in rows[m].get(sk, {}))}) | "
                     + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def vision_probe_section(results_dir: Path, scale: str = "cpu") -> str:
    """Linear probes of the vision tokens (``--vision-probe N``) from the diagnostics JSON."""
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    rows = json.loads(p.read_text()).get("vision_probe", {}) if p.is_file() else {}
    if not rows:
        return ""
    order = {"untrained (A)": 0, "B1": 1, "B": 2}
    models = sorted(rows, key=lambda m: (order.get(m, 3), *_run_order(m)))
    tasks = [t for t in ("cell", "shape", "colour") if all(t in rows[m] for m in models)]
    first = rows[models[0]]
    lines = [f"### Is it in the vision tokens? (`--vision-probe {first.get('n', '?')}`: single-object scenes)", "",
             "Held-out accuracy (%) of a linear probe reading an object's grid cell, shape and colour from the "
             "vision tower's output tokens laid out in order (*flat*: where the object is shows as which token "
             "lights up) and from their mean / max / min over the tokens (*pooled*: what the tokens say, wherever "
             "they are). High here but low in the perception table = the tower carries the fact and the language "
             "model does not use it.", "",
             "| model | " + " | ".join(f"{t} flat | {t} pooled" for t in tasks) + " |",
             "|---|" + "---|" * (2 * len(tasks))]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(f"{100 * rows[m][t]['flat']:.0f} | {100 * rows[m][t]['pooled']:.0f}"
                                              for t in tasks) + " |")
    lines.append("| chance | " + " | ".join(f"{100 * first[t]['chance']:.0f} | {100 * first[t]['chance']:.0f}"
                                           for t in tasks) + " |")
    return "\n".join([*lines, ""])


_BUDGET_ORDER = ("all", "know", "reason", "ocr")
_VISION_SUITES = ("VisKnow", "VisReason", "OCR")


def vision_budget_section(results_dir: Path, scale: str = "cpu", res: dict[str, Any] | None = None) -> str:
    """Vision-only training from the ViT stage (``--vision-budget STEPS``) from the diagnostics JSON: the vision
    suites against the tokens of image-text documents trained on (mean over data seeds, with their spread), beside
    the ablation's early runs (``res``) and any probe that changed the joint budget."""
    p = results_dir / "fusion_ablation" / f"diagnostics_{scale}.json"
    rows = json.loads(p.read_text()).get("vision_budget", {}) if p.is_file() else {}
    if not rows:
        return ""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows.values():
        groups.setdefault((r["mix"], r["steps"]), []).append(r)

    def cells(vals: list[dict[str, float]]) -> str:
        out = []
        for s in _VISION_SUITES:
            xs = [100 * v[s] for v in vals]
            m = sum(xs) / len(xs)
            out.append(f"{m:.1f}" if len(xs) == 1 else f"{m:.1f} ({min(xs):.1f}–{max(xs):.1f})")
        return " | ".join(out)

    lines = ["### How much vision data does the model need? (`--vision-budget STEPS`)", "",
             "From the ViT-stage checkpoint (B), everything trained on image-text documents only (no text) at the "
             "joint stage's learning rate, for a number of steps; then the three held-out vision suites scored as in "
             "Table 1. *tokens* counts the documents' tokens (image and text, padding excluded), the unit of a joint "
             "run's vision budget. Mixes: *all* = the joint stage's vision corpora; *know*, *reason*, *ocr* = only "
             "the corpora that train that suite. Several data seeds: mean (min–max). For reference, B1's ViT read by "
             "the caption decoder it was trained with (caption-style rows and OCR questions).", "",
             "| mix | steps | seeds | tokens (k) | " + " | ".join(_VISION_SUITES) + " |",
             "|---|---|---|---|" + "---|" * len(_VISION_SUITES)]
    for (mix, n), rs in sorted(groups.items(), key=lambda kv: (_BUDGET_ORDER.index(kv[0][0])
                                                               if kv[0][0] in _BUDGET_ORDER else 9, kv[0])):
        toks = sum(r["tokens"] for r in rs) / len(rs) / 1000
        label = "*B1, own decoder (ViT-stage rows)*" if mix == "B1" else mix
        lines.append(f"| {label} | {n} | {len(rs)} | {toks:.0f} | " + cells([r["final"] for r in rs]) + " |")
    if res is not None:
        early = [r for r in res.get("runs", []) if r["schedule"] == "early"]
        if early:
            lines.append(f"| *joint early (Table 1, + {early[0]['tokens']['text'] / 1000:.0f}k text)* | "
                         f"{res['config'].get('joint_steps', '?')} | {len(early)} | "
                         f"{early[0]['tokens']['vision'] / 1000:.0f} | " + cells([r["final"] for r in early]) + " |")
        for f in sorted((results_dir / "fusion_ablation" / "probes").glob("*.json")):
            r = json.loads(f.read_text())
            if set(r.get("overrides", {})) == {"joint_steps"} and "tokens" in r:
                lines.append(f"| *probe {r.get('probe', f.stem)} ({r['schedule']}, + {r['tokens']['text'] / 1000:.0f}k "
                             f"text)* | {r['overrides']['joint_steps']} | 1 | {r['tokens']['vision'] / 1000:.0f} | "
                             + cells([r["final"]]) + " |")
        if res.get("chance"):
            lines.append("| chance | | | | " + " | ".join(f"{100 * res['chance'][s]:.1f}" for s in _VISION_SUITES)
                         + " |")
    const = json.loads(p.read_text()).get("best_constant", {})
    if all(s in const for s in _VISION_SUITES):
        lines.append("| blind (best constant answer per kind of question) | | | | "
                     + " | ".join(f"{100 * const[s]:.1f}" for s in _VISION_SUITES) + " |")
    return "\n".join([*lines, ""])


def section(results_dir: Path | None = None, docs_dir: Path | None = None, scale: str = "cpu") -> str:
    """Chapter 05's part of docs/reproduction.md (+ its figure under ``docs_dir``) from the results."""
    results_dir = resolve_results_dir(results_dir)
    docs_dir = Path(docs_dir) if docs_dir is not None else ROOT / "docs"
    res = load_results(scale, results_dir)
    fig_rel = None
    if res is not None and res.get("runs"):
        fig_rel = f"figures/fusion_text_curve_{scale}.png"
        text_curve_figure(res, docs_dir / fig_rel)
    history = ("### How the model came to see (issue #15)\n\nThe world was rebuilt at cpu scale so that what a "
               "question asks can be read off the vision-token grid (data card: [world.md](world.md)); the ViT stage "
               "reads dense Q&A; the probes that led there, and what still does not reproduce, are in "
               "[vision_investigation.md](vision_investigation.md). The probes and checks below were measured on "
               "the *previous* world (data version 2) unless their config says otherwise.\n")
    parts = [
        fusion_section(res, fig_rel, blind_baseline(results_dir, res, scale)),
        history,
        probes_section(results_dir, res),
        dev_section(results_dir),
        diagnostics_section(results_dir, scale),
        skills_section(results_dir, scale),
        fields_section(results_dir, scale),
        vision_probe_section(results_dir, scale),
        vision_budget_section(results_dir, scale, res),
        archive_section(results_dir, res),
    ]
    return "\n".join(parts).rstrip() + "\n"
