"""Training the swarm's LMs: the model, SFT on scripted traces, and PARL RL with the K2.5 loss.

* :func:`build_lm`: a small k25mini K2 decoder (MLA + one MoE layer) over the toy byte tokenizer.
* :func:`collect_sft_pairs` / :func:`sft`: (prompt, completion) pairs from scripted episodes; next-token
  loss on completion tokens only, trained by the shared :class:`k25mini.train.Trainer`.
* :func:`rl_train`: sample G episodes per task from the current orchestrator (π_old), reward each with
  PARL (``PARLReward``: λ1·r_parallel + λ2·r_finish + item-F1, λ annealed to exactly 0), group-mean baseline,
  ``get_loss("kimi_k25")`` over the orchestrator's own completion tokens (the generic update step is
  :func:`k25mini.rl.policy_update`). Subagent steps are never in the batch (``Episode.loss_steps()`` holds
  main-agent steps only) and the subagent model is frozen.

Both build their optimiser with :func:`k25mini.optim.build_optimizer` (AdamW, no weight decay), whose step
post-hook runs the MoE layer's aux-loss-free router-bias update after every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from k25mini.agents import Episode
from k25mini.config import nano
from k25mini.data.tokenizer import Tokenizer
from k25mini.model import K2ForCausalLM
from k25mini.optim import build_optimizer
from k25mini.rl import PARLConfig, PARLReward, group_advantages
from k25mini.rl.step import completion_logp, pack_completions, pad_completions, policy_update
from k25mini.swarm.env import EnvConfig, aggregate, episode_metrics, make_runtime, run_episodes
from k25mini.swarm.policy import LMPolicy
from k25mini.swarm.tasks import SwarmTask
from k25mini.train import Callback, TrainConfig, Trainer
from k25mini.train.rng import capture_rng_state, restore_rng_state
from k25mini.world import World

__all__ = ["build_lm", "lm_config", "collect_sft_pairs", "sft", "RLConfig", "rl_train", "rollout_batch",
           "sequences_from_episodes", "completion_logp", "rl_step", "frozen_copy", "swarm_optimizer"]

_TOK = Tokenizer()
PAD = _TOK.pad_id
_ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the swarm has always trained with


def lm_config(hidden: int = 64, layers: int = 2):
    """A nano K2 text config: ``layers`` decoder layers (the first dense, the rest MoE), 512-token vocab."""
    return replace(nano().text, hidden_size=hidden, num_hidden_layers=layers, max_position_embeddings=256)


def build_lm(seed: int, hidden: int = 64, layers: int = 2) -> K2ForCausalLM:
    torch.manual_seed(seed)
    return K2ForCausalLM(lm_config(hidden, layers))


# ------------------------------------------------------------------------------------- SFT


def collect_sft_pairs(episodes: list[Episode], roles: tuple[str, ...] = ("main",), unique: bool = True,
                      per_prompt: int = 10) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) of every step whose agent role is in ``roles`` (``main`` / ``subagent``).

    ``unique``: every distinct prompt gets the same weight (``per_prompt`` copies), split between its
    completions in proportion to how often the teacher chose them — so rare states (finish with one step
    left) weigh as much as common ones, while a branch the teacher rarely takes stays rare. ``unique=False``:
    the raw steps."""
    raw: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for ep in episodes:
        for s in ep.steps:
            if s.role in roles and "prompt_ids" in s.info and "completion_ids" in s.info:
                raw.append((tuple(s.info["prompt_ids"]), tuple(s.info["completion_ids"])))
    if not unique:
        return [(list(p), list(c)) for p, c in raw]
    counts: dict[tuple[int, ...], dict[tuple[int, ...], int]] = {}
    for p, c in raw:
        counts.setdefault(p, {}).setdefault(c, 0)
        counts[p][c] += 1
    out = []
    for p, cs in counts.items():
        total = sum(cs.values())
        for c, n in cs.items():
            out += [(list(p), list(c))] * max(round(per_prompt * n / total), 0)
    return out


def _pad_batch(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, S] (right-padded) and a completion mask [B, S] marking completion positions."""
    return pad_completions(pairs, PAD)


def swarm_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW (no weight decay) over ``model``'s trainable parameters via ``build_optimizer``, so the MoE
    router-bias update runs after every step."""
    return build_optimizer(model, kind="adamw", lr=lr, weight_decay=0.0, betas=_ADAM_BETAS)


class _LogLoss(Callback):
    def __init__(self, log: Callable[[int, float], None]) -> None:
        self.log = log

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.log(record["step"] - 1, record["loss"])


def sft(model: nn.Module, pairs: list[tuple[list[int], list[int]]], steps: int, batch_size: int = 32,
        lr: float = 3e-3, seed: int = 0, log: Callable[[int, float], None] | None = None) -> list[float]:
    """Next-token cross-entropy on completion tokens; returns the loss per step.

    Runs the shared :class:`~k25mini.train.Trainer` (AdamW via ``build_optimizer``, constant lr, grad-norm
    clip 1.0, fp32): each step draws ``batch_size`` pairs with ``random.Random(seed)``; ``log(step, loss)`` is
    called after each (0-based) step. The global RNG states are left as they were."""
    if not pairs:
        raise ValueError("pairs must be non-empty")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if steps == 0:
        return []
    rng = random.Random(seed)
    picks = [[rng.randrange(len(pairs)) for _ in range(batch_size)] for _ in range(steps)]

    def batch_at(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, comp = _pad_batch([pairs[j] for j in picks[index]])
        return ids, ids.masked_fill(~comp, -100)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, labels = batch
        return m.loss(ids, labels)

    cfg = TrainConfig(steps=steps, lr=lr, weight_decay=0.0, betas=_ADAM_BETAS, decay="constant", warmup_steps=0,
                      grad_clip=1.0, optimizer="adamw", log_every=1, eval_at_end=False, save_final=False,
                      bf16=False, progress=False, seed=seed)
    rng_state = capture_rng_state()  # the Trainer seeds the global RNGs; sft leaves them as it found them
    try:
        # the Trainer builds the optimiser from cfg: build_optimizer(kind="adamw"), as swarm_optimizer does
        trainer = Trainer(model, loss_fn, batch_at, cfg, callbacks=[_LogLoss(log)] if log is not None else ())
        history = trainer.fit()
    finally:
        restore_rng_state(rng_state)
    return [r["loss"] for r in history if r["split"] == "train"]


# ------------------------------------------------------------------------------------- RL


@dataclass
class RLConfig:
    """RL hyper-parameters. α, β, τ: the K2.5 loss's mask band and log-ratio penalty (not published)."""

    iterations: int = 20
    tasks_per_iter: int = 4
    group_size: int = 6
    lr: float = 1e-3
    updates_per_iter: int = 2
    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 2.0
    tau: float = 0.01
    max_new_tokens: int = 80
    parl: PARLConfig = field(default_factory=PARLConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parl"] = self.parl.to_dict()
        return d


def sequences_from_episodes(episodes: list[Episode], advantages: torch.Tensor):
    """One training sequence per *main-agent* step: (prompt_ids, completion_ids, old_logp, advantage).

    Subagent steps are skipped by construction (``loss_steps`` keeps ``in_loss`` steps, i.e. role main)."""
    seqs = []
    for ep, a in zip(episodes, advantages.tolist()):
        for s in ep.loss_steps():
            if s.role != "main":  # defensive: the runtime marks only main steps in_loss
                raise ValueError(f"a {s.role} step is marked in_loss")
            if "completion_ids" in s.info and "logp" in s.info:
                seqs.append((s.info["prompt_ids"], s.info["completion_ids"], s.info["logp"], a))
    return seqs


def rl_step(model: nn.Module, opt: torch.optim.Optimizer, seqs, cfg: RLConfig) -> dict[str, float]:
    """``cfg.updates_per_iter`` K2.5-loss updates on one batch of sequences; returns the last stats.

    The generic step is :func:`k25mini.rl.policy_update` (grad-norm clip 1.0; the MoE bias hook runs)."""
    return policy_update(model, opt, pack_completions(seqs, PAD), loss="kimi_k25", updates=cfg.updates_per_iter,
                         grad_clip=1.0, alpha=cfg.alpha, beta=cfg.beta, tau=cfg.tau)


def rollout_batch(world: World, tasks: list[SwarmTask], policy: LMPolicy, subagent: Any, env: EnvConfig,
                  swarm: bool, budget: int | None | str = "train", prefix: str = "ep") -> list[Episode]:
    rt = make_runtime(world, policy, subagent, env, swarm=swarm, budget=budget)
    return run_episodes(rt, tasks, prefix)


def rl_train(model: nn.Module, world: World, tasks: list[SwarmTask], env: EnvConfig, cfg: RLConfig, *,
             subagent: Any = None, swarm: bool = True, seed: int = 0,
             log: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """PARL RL of ``model`` (the orchestrator, or the single agent when ``swarm=False``). Returns one dict of
    training metrics per iteration (the Fig. 4 curves: item-F1, average parallelism, ...)."""
    if swarm and subagent is None:
        raise ValueError("subagent is required when swarm=True")
    rng = random.Random(seed)
    opt = swarm_optimizer(model, cfg.lr)
    reward = PARLReward(cfg.parl, cfg.iterations)
    history = []
    for it in range(cfg.iterations):
        chosen = [tasks[rng.randrange(len(tasks))] for _ in range(cfg.tasks_per_iter)]
        batch = [t for t in chosen for _ in range(cfg.group_size)]
        policy = LMPolicy(model, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          seed=seed * 100003 + it)
        eps = rollout_batch(world, batch, policy, subagent, env, swarm, prefix=f"it{it}")
        mets = [episode_metrics(e, t) for e, t in zip(eps, batch)]
        rs = []
        parts_all = []
        for e, m in zip(eps, mets):
            r, parts = reward(m["item_f1"], e, it)
            rs.append(r)
            parts_all.append(parts)
        rewards = torch.tensor(rs, dtype=torch.float32)
        adv = group_advantages(rewards, cfg.group_size)
        seqs = sequences_from_episodes(eps, adv)
        stats = rl_step(model, opt, seqs, cfg) if seqs else {}
        row = aggregate(mets)
        row.update(iteration=float(it), reward=float(rewards.mean()), lambda1=parts_all[0]["lambda1"],
                   lambda2=parts_all[0]["lambda2"], r_parallel=sum(p["r_parallel"] for p in parts_all) / len(rs),
                   r_finish=sum(p["r_finish"] for p in parts_all) / len(rs),
                   masked_frac=stats.get("masked_frac", 0.0), n_seqs=float(len(seqs)))
        history.append(row)
        if log is not None:
            log(row)
    return history


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen copy (no gradients) for subagents."""
    m = K2ForCausalLM(model.config)  # deepcopy fails on the MoE layer's cached (non-leaf) aux tensors
    m.load_state_dict(model.state_dict())
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()
