"""Chapter 07's mismatch ablation: why the K2.5 loss masks tokens whose ratio leaves [alpha, beta].

An inference engine and a training engine never compute exactly the same probabilities (other kernels, other
precision, other batch shapes). Here the mismatch is injected: each iteration samples from a **perturbed copy** of
the policy (every language-model weight matrix plus Gaussian noise of ``sigma`` times its own std, fresh noise
each iteration), and the sampler's log-probs are pi_old, as an inference engine's would be. The policy is trained
on those samples with ``cfg.updates`` optimiser steps per batch, so the ratio rho = pi_theta / pi_old is off 1 from
the first step. Arms (all from chapter 06's zero-vision checkpoint, on the same vision RL task as Table 2):

* ``pg``        - importance-weighted policy gradient, no mask, no tau (``alpha -> 0, beta -> inf``);
* ``mask``      - the K2.5 mask on rho in [alpha, beta], tau = 0;
* ``mask_tau``  - mask + tau (log rho)^2 on the kept tokens only (the prose's "zero gradient" reading);
* ``mask_tau_all`` - mask + tau (log rho)^2 on every token (the formula's literal reading, ``penalty_on_masked``);
* ``control``   - ``mask_tau`` without any injected mismatch (sigma = 0).

Recorded per iteration: the spread of log rho over the batch's tokens (first update), the gradient norm before
clipping, the share of tokens masked, the reward. Stability is summarised per arm over seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k25mini.data.tokenizer import Tokenizer
from k25mini.experiments.ch07_clipped_rl.config import PAPER
from k25mini.experiments.ch07_clipped_rl.config import config_for as rl_config
from k25mini.experiments.ch07_clipped_rl.run import _ban, _load, base_checkpoint, train_items
from k25mini.experiments.results import read_json, staleness, write_result
from k25mini.experiments.results import results_dir as resolve_results_dir
from k25mini.optim import build_optimizer
from k25mini.rl.iteration import rl_iteration
from k25mini.scale import current_scale, pick, validate_scale

__all__ = ["MismatchConfig", "mismatch_config", "ARMS", "perturb_", "run_arm", "run_mismatch", "summarise_mismatch",
           "MISMATCH_PACKAGE", "MISMATCH_EXPERIMENT"]

MISMATCH_PACKAGE = "k25mini.experiments.ch07_clipped_rl.mismatch"
MISMATCH_EXPERIMENT = "rl_mismatch"
#: arm -> (loss kwargs of kimi_k25, injected sigma factor: 1 = cfg.sigma, 0 = none)
ARMS: dict[str, tuple[dict[str, Any], float]] = {
    "pg": ({"alpha": 1e-9, "beta": 1e9, "tau": 0.0}, 1.0),
    "mask": ({"alpha": 0.5, "beta": 2.0, "tau": 0.0}, 1.0),
    "mask_tau": ({"alpha": 0.5, "beta": 2.0, "tau": 0.01}, 1.0),
    "mask_tau_all": ({"alpha": 0.5, "beta": 2.0, "tau": 0.01, "penalty_on_masked": True}, 1.0),
    "control": ({"alpha": 0.5, "beta": 2.0, "tau": 0.01}, 0.0),
}


@dataclass(frozen=True)
class MismatchConfig:
    scale: str
    iterations: int = 60
    updates: int = 2  # optimiser steps per sampled batch: the ratio also drifts by learning
    sigma: float = 0.03  # relative weight noise of the sampler copy
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        for name in ("iterations", "updates"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not 0 <= self.sigma < 1:
            raise ValueError(f"sigma must be a number in [0, 1), got {self.sigma!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if not self.arms or bad:
            raise ValueError(f"arms must be a non-empty subset of {tuple(ARMS)}, got {list(self.arms)}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of ints >= 0, got {self.seeds!r}")

    def rl(self):
        """The Table 2 config this ablation shares its task, sizes and optimiser with."""
        return rl_config(self.scale, iterations=self.iterations)

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("seeds"), d.pop("arms")
        d["rl"] = self.rl().key()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def mismatch_config(scale: str | None = None, **overrides: Any) -> MismatchConfig:
    sc = current_scale() if scale is None else validate_scale(scale, "scale")
    base = dict(iterations=pick(smoke=2, cpu=60, gpu=200, scale=sc))
    base.update(overrides)
    return MismatchConfig(scale=sc, **base)


@torch.no_grad()
def perturb_(model, policy, sigma: float, generator: torch.Generator) -> None:
    """``model`` := ``policy`` + noise: every floating language-model tensor with more than one element gets
    ``sigma * std(tensor) * N(0, 1)``; the vision tower is copied unchanged."""
    model.load_state_dict(policy.state_dict())
    if sigma == 0:
        return
    for p in model.language_model.parameters():
        if p.dtype.is_floating_point and p.numel() > 1:
            p.add_(sigma * p.std() * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))


def run_file(cfg: MismatchConfig, arm: str, seed: int, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / MISMATCH_EXPERIMENT / cfg.scale / f"{arm}-s{seed}.json"


def summary_file(cfg: MismatchConfig, results_dir: Path | None = None) -> Path:
    return resolve_results_dir(results_dir) / f"{MISMATCH_EXPERIMENT}_{cfg.scale}.json"


def run_arm(cfg: MismatchConfig, arm: str, seed: int, base: Path, results_dir: Path | None = None,
            force: bool = False, log=print) -> dict[str, Any]:
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {tuple(ARMS)}, got {arm!r}")
    path = run_file(cfg, arm, seed, results_dir)
    old = None if force else read_json(path)
    if old is not None and old.get("config_key") == cfg.key() and old.get("base_checkpoint") == str(base):
        flag = staleness(old, MISMATCH_PACKAGE)
        if flag:
            old["stale"] = flag
        return old
    rl = cfg.rl()
    kw, factor = ARMS[arm]
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    policy = _load(base)
    for p in policy.vision_tower.parameters():
        p.requires_grad_(False)
    sampler = copy.deepcopy(policy)
    opt = build_optimizer(policy, rl.optimizer, lr=rl.lr)
    gen, noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(10_000 + seed)
    tok = Tokenizer()
    curve = []
    for it in range(cfg.iterations):
        perturb_(sampler, policy, cfg.sigma * factor, noise)
        st = rl_iteration(policy, opt, train_items(rl, seed, it), k=rl.k, loss="kimi_k25", loss_kwargs=kw,
                          updates=cfg.updates, max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                          generator=gen, ban=_ban(rl, tok), sampler=sampler)
        curve.append({m: round(float(st[m]), 5) for m in ("reward", "grad_norm", "masked_frac", "first_log_ratio_std",
                                                          "first_log_ratio_absmax", "loss") if m in st})
    res = {"arm": arm, "seed": seed, "scale": cfg.scale, "config_key": cfg.key(), "config": dataclasses.asdict(cfg),
           "base_checkpoint": str(base), "loss_kwargs": kw, "sigma": cfg.sigma * factor, "curve": curve}
    log(f"{arm} s{seed}: reward {np.mean([c['reward'] for c in curve[-10:]]):.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    return write_result(path, res, experiment=f"{MISMATCH_EXPERIMENT}/run", package=MISMATCH_PACKAGE,
                        wall_s=time.perf_counter() - t0)


def _job(cfg, arm, seed, base, results_dir, force, threads):
    torch.set_num_threads(threads)
    return run_arm(cfg, arm, seed, base, results_dir, force)


def _ms(vals) -> dict[str, Any]:
    a = np.asarray(vals, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a),
            "values": [float(v) for v in a]}


def summarise_mismatch(cfg: MismatchConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm over seeds: median and max gradient norm, mean log-ratio spread, masked share, reward of the first
    and last ten iterations, and iterations whose gradient norm exceeded 10x the control's median."""
    by: dict[str, list] = {}
    for r in runs:
        by.setdefault(r["arm"], []).append(r)
    ctrl = [c["grad_norm"] for r in by.get("control", []) for c in r["curve"]]
    spike = 10 * float(np.median(ctrl)) if ctrl else None
    table = {}
    w = max(1, min(10, cfg.iterations // 4))
    for arm, rs in by.items():
        g = [[c["grad_norm"] for c in r["curve"]] for r in rs]
        table[arm] = {
            "grad_norm_median": _ms([np.median(x) for x in g]),
            "grad_norm_max": _ms([np.max(x) for x in g]),
            "log_ratio_std": _ms([np.mean([c.get("first_log_ratio_std", 0.0) for c in r["curve"]]) for r in rs]),
            "masked_frac": _ms([np.mean([c.get("masked_frac", 0.0) for c in r["curve"]]) for r in rs]),
            "reward_first": _ms([np.mean([c["reward"] for c in r["curve"][:w]]) for r in rs]),
            "reward_last": _ms([np.mean([c["reward"] for c in r["curve"][-w:]]) for r in rs]),
            "spikes": _ms([sum(x > spike for x in gg) for gg in g]) if spike is not None else None,
        }
    return {"scale": cfg.scale, "config_key": cfg.key(), "config": dataclasses.asdict(cfg), "table": table,
            "spike_threshold": spike, "window": w, "paper": PAPER["section"],
            "runs": [{"arm": r["arm"], "seed": r["seed"], "stale": r.get("stale")} for r in runs]}


def run_mismatch(cfg: MismatchConfig, runs_dir: Path | None = None, results_dir: Path | None = None,
                 workers: int = 1, force: bool = False, log=print) -> dict[str, Any]:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    t0 = time.perf_counter()
    base = base_checkpoint(cfg.rl(), runs_dir, log)
    jobs = [(a, s) for a in cfg.arms for s in cfg.seeds]
    if workers == 1:
        got = [run_arm(cfg, a, s, base, results_dir, force, log) for a, s in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            got = [f.result() for f in [ex.submit(_job, cfg, a, s, base, results_dir, force, 1) for a, s in jobs]]
    summary = summarise_mismatch(cfg, got)
    return write_result(summary_file(cfg, results_dir), summary, experiment=MISMATCH_EXPERIMENT,
                        package=MISMATCH_PACKAGE, wall_s=time.perf_counter() - t0)
