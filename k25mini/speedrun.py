"""`make speedrun`: run every chapter's main job that exists, at the current K25_SCALE, and report.

Each stage is a function ``stage() -> dict[str, str]`` (report lines) named by a dotted path, so a
chapter adds itself with one line in STAGES. A stage whose module does not exist yet is reported
as "not built yet"; a stage that fails stops the run with a non-zero exit code.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from k25mini.scale import current_scale, describe

ROOT = Path(__file__).resolve().parents[1]

# (stage name, "module:function") in chapter order
STAGES: list[tuple[str, str]] = [
    ("00 configs and parameter counts", "k25mini.speedrun:stage_configs"),
    ("00b toy world corpora and eval suites", "k25mini.speedrun:stage_world"),
    ("05 early-fusion ablation (Table 1)", "k25mini.pretrain.fusion:speedrun_stage"),
    ("08 agent swarm / PARL", "k25mini.speedrun:stage_swarm"),
    ("docs/reproduction.md from results/", "k25mini.speedrun:stage_report"),
]


def stage_configs() -> dict[str, str]:
    from k25mini.config import PRESETS, count_params, kv_cache_bytes_per_token, preset

    lines = {}
    for name in PRESETS:
        pc = count_params(preset(name))
        lines[name] = f"total {pc.total / 1e9:10.4f} B   activated {pc.activated / 1e9:10.4f} B"
    t = preset("k2").text
    mla, mha = kv_cache_bytes_per_token(t, "mla"), kv_cache_bytes_per_token(t, "mha")
    lines["k2 KV-cache/token"] = f"MLA {mla / 1024:.1f} KiB vs MHA {mha / 1024:.1f} KiB ({mha / mla:.1f}x smaller)"
    return lines


def stage_world(seed: int = 0) -> dict[str, str]:
    """Build (or reuse from data/cache/) every training corpus and eval suite at the current scale."""
    import datasets

    from k25mini.data import build_corpus, eval_dataset
    from k25mini.world import CORPORA, SUITES, chance_baseline

    datasets.disable_progress_bars()
    scale = current_scale()
    t0 = time.time()
    rows = media = 0
    for name in CORPORA:
        ds = build_corpus(name, seed, scale)
        rows += len(ds)
        media += sum(len(m) for m in ds["media"])
    n_eval = {s: len(eval_dataset(s, seed, scale)) for s in SUITES}
    return {
        "training corpora": f"{len(CORPORA)} corpora, {rows:,} rows, {media:,} images/videos (seed {seed})",
        "eval suites": ", ".join(f"{s} {n}" for s, n in n_eval.items()),
        "chance baselines": ", ".join(f"{s} {chance_baseline(s):.3f}" for s in SUITES),
        "time (build or cache hit)": f"{time.time() - t0:.1f} s",
    }


def stage_swarm() -> dict[str, str]:
    """Single agent vs PARL-trained swarm (reuses results/swarm_<scale>.json when config and seeds match)."""
    from k25mini.swarm import default_config, run_experiment

    res = run_experiment(default_config(), log=lambda msg: None)
    s = res["summary"]

    def ms(d: dict, scale: float = 100.0) -> str:
        return f"{d['mean'] * scale:.1f} ± {d['std'] * scale:.1f}"

    single, swarm = s["single"]["wide"], s["swarm"]["wide"]
    return {
        "seeds": str(res["seeds"]),
        "single agent (wide)": f"item-F1 {ms(single['item_f1'])}, critical steps {ms(single['critical_steps'], 1)}",
        "swarm after PARL (wide)": f"item-F1 {ms(swarm['item_f1'])}, critical steps {ms(swarm['critical_steps'], 1)}, "
        f"avg parallelism {ms(swarm['avg_parallel'], 1)}",
        "acceptance": ", ".join(f"{k}={v}" for k, v in s["acceptance"].items()),
    }


def stage_report() -> dict[str, str]:
    """Regenerate docs/reproduction.md (paper vs ours) from results/."""
    from k25mini import report

    text = report.build()
    return {"docs/reproduction.md": f"{len(text.splitlines())} lines regenerated from results/"}


def _resolve(path: str):
    mod_name, fn_name = path.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            return None
        raise
    return getattr(mod, fn_name)


def main(argv: list[str] | None = None) -> int:
    scale = current_scale()
    print(f"k25mini speedrun - {describe()}\n", flush=True)
    report: dict[str, dict] = {}
    t_all = time.time()
    for name, path in STAGES:
        fn = _resolve(path)
        if fn is None:
            print(f"[skip] {name}: not built yet")
            report[name] = {"status": "not built yet"}
            continue
        print(f"[run ] {name} ...", flush=True)
        t0 = time.time()
        try:
            lines = fn()
        except Exception as e:  # report which stage failed, keep earlier results
            print(f"[FAIL] {name}: {type(e).__name__}: {e}")
            report[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            _write(report, scale)
            return 1
        dt = time.time() - t0
        report[name] = {"status": "ok", "seconds": round(dt, 2), "report": lines}
        for k, v in lines.items():
            print(f"       {k:>24}: {v}")
        print(f"[ ok ] {name} ({dt:.1f} s)\n", flush=True)
    path = _write(report, scale)
    print(f"speedrun finished in {time.time() - t_all:.1f} s; report written to {path.relative_to(ROOT)}")
    return 0


def _write(report: dict, scale: str) -> Path:
    out = ROOT / "results" / f"speedrun_{scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"scale": scale, "stages": report}, indent=2))
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    sys.exit(main())
