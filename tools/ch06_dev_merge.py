"""Chapter 06 dev probe: weight interpolation between chapter 05's base and a dev-trained SFT checkpoint.

    python tools/ch06_dev_merge.py [--arm zero_vision_blank] [--alphas 0.5 0.7] [--seeds 0 1 2] [--set k=v ...]

For each seed, the SFT checkpoint that ``tools/ch06_dev.py`` trained with the same config (under
``runs/zero_vision_dev/``) is merged with the base weights, ``base + alpha * (sft - base)``, and the merged model
is scored on the dev split (train-split items, tag ``ch06-dev``; never held-out items). Results go to
``results/zero_vision_sft/dev/merge-<alpha>/``. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from ch06_dev import parse_set  # noqa: E402

from k25mini.experiments.ch06_zero_vision.config import TEXT_SUITES, VISION_SKILLS, config_for  # noqa: E402
from k25mini.experiments.ch06_zero_vision.run import base_checkpoint, eval_items, evaluate_arm, new_model  # noqa: E402
from k25mini.tools import CodeTool  # noqa: E402
from k25mini.train import latest_checkpoint, load_weights  # noqa: E402


def merged_model(base: Path, sft: Path, alpha: float):
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    m_base, m_sft = new_model(), new_model()
    load_weights(m_base, base)
    load_weights(m_sft, sft)
    sb, ss = m_base.state_dict(), m_sft.state_dict()
    out = {k: (sb[k] + alpha * (ss[k] - sb[k])) if sb[k].is_floating_point() else ss[k] for k in sb}
    m_sft.load_state_dict(out)
    return m_sft.eval()


def job(cfg, arm, seed, alpha, threads):
    torch.set_num_threads(threads)
    runs = ROOT / "runs" / "zero_vision_dev" / "zero_vision" / cfg.scale / cfg.key() / f"{arm}-s{seed}"
    ck = latest_checkpoint(runs / "checkpoints")
    if ck is None:
        raise SystemExit(f"no dev checkpoint under {runs}: run tools/ch06_dev.py with the same --set first")
    model = merged_model(base_checkpoint(cfg), ck, alpha)
    tool = CodeTool()
    try:
        ev = evaluate_arm(cfg, arm, model, eval_items(cfg), tool)
    finally:
        tool.close()
    out = ROOT / "results" / "zero_vision_sft" / "dev" / f"merge-{alpha:g}" / f"{arm}-s{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    ev = {"arm": arm, "seed": seed, "alpha": alpha, "config_key": cfg.key(), "checkpoint": str(ck), **ev}
    out.write_text(json.dumps(ev, indent=1, default=str))
    return ev


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", default="zero_vision_blank")
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--per-skill", type=int, default=20)
    ap.add_argument("--text-items", type=int, default=256)
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    cfg = config_for("cpu", eval_split="dev", eval_per_skill=a.per_skill, text_eval_items=a.text_items,
                     arms=("no_sft", a.arm), seeds=tuple(a.seeds), **parse_set(a.set))
    print(f"config {cfg.key()}", flush=True)
    todo = [(s, al) for al in a.alphas for s in a.seeds]
    with ProcessPoolExecutor(max_workers=a.workers) as ex:
        res = list(ex.map(job, *zip(*[(cfg, a.arm, s, al, a.threads) for s, al in todo])))
    names = [k for k in (*VISION_SKILLS, *TEXT_SUITES) if k in res[0]["per"]]
    print("| alpha | seed | " + " | ".join(names) + " | valid calls |")
    for al in a.alphas:
        rs = [r for r in res if r["alpha"] == al]
        for r in rs:
            calls = sum(v.get("calls") or 0 for v in r["per"].values())
            valid = sum((v.get("calls") or 0) * (v.get("valid_call_rate") or 0) for v in r["per"].values())
            print(f"| {al:g} | {r['seed']} | " + " | ".join(f"{100 * r['per'][k]['acc']:.1f}" for k in names)
                  + f" | {100 * valid / max(calls, 1):.1f} |")
        print(f"| {al:g} | mean | " + " | ".join(f"{100 * np.mean([r['per'][k]['acc'] for r in rs]):.1f}"
                                             for k in names) + " | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
