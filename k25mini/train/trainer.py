"""``Trainer``: the one training loop every chapter reuses (pre-training, SFT, RL).

One optimiser step::

    lr <- schedule(step)                                  (every param group scaled, ratios kept)
    for micro in range(grad_accum):                       (global micro-batch index = step * grad_accum + micro)
        batch = train_data(index)  (or next(train_data))  -> this rank's slice -> device
        loss, metrics = loss_fn(model, batch)             (bf16 autocast on CUDA only)
        (loss / grad_accum).backward()
    grad_norm = get_total_norm(grads)                     (always computed, for the log)
    NaN/inf loss or grad_norm -> raise FloatingPointError naming the step and "loss" or the first parameter with a
                                 non-finite gradient, or (nonfinite="skip") drop the gradients and skip the
                                 optimiser step (the step counter still advances)
    clip_grads_with_norm_(grad_clip)                      (when grad_clip is set)
    optimizer.step()                                      (its step post-hooks: MuonClip's QK-Clip, then the
                                                           aux-loss-free MoE router-bias update if the model
                                                           has MoE layers)
    post_step hooks(trainer)
    zero_grad; step += 1; log / eval / checkpoint when due

``loss_fn(model, batch)`` returns a scalar loss tensor, or ``(loss, metrics)`` with ``metrics`` a dict of
scalars (floats or 0-dim tensors) averaged over micro-batches (and ranks) and logged. ``eval_fn(model)`` returns
a dict of scalars; it runs in eval mode under ``no_grad`` with all RNG states saved and restored around it, so
evaluating never changes the training trajectory. The data contract is in :mod:`k25mini.train.data`.

Under torchrun with an FSDP2-sharded model (:func:`k25mini.train.distributed.shard_model`) the same loop is a
data-parallel run: each rank takes its slice of the global micro-batch, FSDP averages gradients, logged values
are averaged over ranks, only rank 0 writes logs; checkpoints gather full tensors (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from k25mini.model.moe import attach_moe_bias_update
from k25mini.train import distributed as D
from k25mini.train.checkpoint import load_checkpoint, save_checkpoint
from k25mini.train.config import TrainConfig
from k25mini.train.data import as_batch_source, shard_batch, to_device
from k25mini.train.lr_schedule import apply_lr, lr_factor, remember_base_lr
from k25mini.train.rng import capture_rng_state, restore_rng_state, seed_everything

__all__ = ["Trainer", "Callback", "make_optimizer"]

# config fields that change the trajectory: a resume with different values is warned about
_TRAJECTORY_FIELDS = ("steps", "lr", "min_lr_ratio", "warmup_steps", "decay", "weight_decay", "grad_clip",
                      "optimizer", "betas", "eps", "qk_clip_tau", "adamw_lr", "grad_accum", "seed", "shard_batch",
                      "nonfinite")


class Callback:
    """Override any of these; the trainer calls them on rank 0 and on every rank alike."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


def _data_parallel_group() -> dist.ProcessGroup | None:
    """The group MoE expert loads are summed over: the world under torchrun (data parallel), else None."""
    return dist.group.WORLD if D.world_size() > 1 else None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names, via ``k25mini.optim.build_optimizer`` (imported lazily).

    Its step post-hooks include the MoE router-bias update when ``model`` has MoE layers, with expert loads
    summed over the data-parallel world under torchrun. A failing import of ``k25mini.optim`` raises."""
    from k25mini.optim import build_optimizer

    return build_optimizer(model, kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           adamw_lr=cfg.adamw_lr, betas=cfg.betas, eps=cfg.eps, qk_clip_tau=cfg.qk_clip_tau,
                           moe_group=_data_parallel_group())


def _scalar(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{where} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        return v.detach().reshape(()).to(torch.float64)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.tensor(float(v), dtype=torch.float64)
    raise ValueError(f"{where} must be a number or a 0-dim tensor, got {type(v).__name__}")


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``train_data`` as ``config`` says (see the module docstring).

    Args:
        model: any nn.Module (optionally FSDP2-sharded). With ``config.device != "auto"`` it is moved there;
            with "auto" the trainer uses the device of the model's parameters.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> (loss, metrics_dict)``.
        train_data: ``batch_at(index)`` callable or a stateful iterator (:mod:`k25mini.train.data`).
        config: :class:`TrainConfig`.
        eval_fn: optional ``eval_fn(model) -> dict[str, float]``.
        callbacks: :class:`Callback`-like objects (duck-typed: any subset of the hook methods).
        optimizer: use this optimiser instead of building ``config.optimizer`` (its current lrs are the base lrs).
            The MoE router-bias update is attached to it as a step post-hook when the model has MoE layers
            (:func:`k25mini.model.moe.attach_moe_bias_update`; a no-op if it already has it).
        post_step: callables ``hook(trainer)`` run after every optimiser step (after its step post-hooks, so
            after the MoE bias update).

    The constructor seeds Python/NumPy/torch with ``config.seed``. Attributes: ``step`` (completed optimiser
    steps), ``optimizer``, ``history`` (logged records, train and eval), ``last_eval``, ``out_dir``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], Any],
        train_data: Any,
        config: TrainConfig,
        eval_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
        callbacks: Iterable[Any] = (),
        optimizer: torch.optim.Optimizer | None = None,
        post_step: Sequence[Callable[[Trainer], Any]] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable: loss_fn(model, batch) -> loss or (loss, metrics)")
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        if eval_fn is not None and not callable(eval_fn):
            raise ValueError("eval_fn must be None or callable: eval_fn(model) -> dict")
        if not all(callable(h) for h in post_step):
            raise ValueError("post_step must be a sequence of callables hook(trainer)")
        config.validate()
        self.config = config
        self.model = model
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.post_step = list(post_step)
        self.source = as_batch_source(train_data)
        self.device = self._resolve_device(model, config.device)
        seed_everything(config.seed)
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, config)
        # the MoE bias update lives on the optimiser (idempotent: build_optimizer already attached it)
        attach_moe_bias_update(self.optimizer, model, _data_parallel_group())
        remember_base_lr(self.optimizer)
        self.step = 0
        self.skipped_steps = 0  # steps skipped for a non-finite loss/gradient (TrainConfig.nonfinite="skip")
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] | None = None
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.ckpt_root = self.out_dir / "checkpoints" if self.out_dir is not None else None
        self._interval: dict[str, float] = {}
        self._interval_n = 0
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _resolve_device(model: nn.Module, spec: str) -> torch.device:
        if spec == "auto":
            p = next(model.parameters(), None)
            return p.device if p is not None else torch.device("cpu")
        dev = torch.device(spec)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device={spec!r} but CUDA is not available")
        if not D.is_sharded(model):
            model.to(dev)
        return dev

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def lr_at(self, step: int) -> float:
        """The schedule multiplier at 0-based ``step`` (the lr of a group is its initial_lr times this)."""
        c = self.config
        return lr_factor(step, c.steps, c.warmup_steps, c.min_lr_ratio, c.decay)

    # ------------------------------------------------------------------ logging
    def _write_record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.out_dir is None or D.rank() != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def _truncate_metrics(self, step: int) -> None:
        """After a resume: keep the logged records up to ``step`` (later ones belong to the abandoned run)."""
        if self.out_dir is None:
            return
        path = self.out_dir / "metrics.jsonl"
        kept: list[dict[str, Any]] = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                    kept.append(rec)
            if D.rank() == 0:
                tmp = path.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
                os.replace(tmp, path)
        self.history = kept
        evals = [r for r in kept if r.get("split") == "eval"]
        self.last_eval = evals[-1] if evals else None

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns this step's values (rank-averaged)."""
        cfg, model = self.config, self.model
        model.train()
        lr_mult = self.lr_at(self.step)
        apply_lr(self.optimizer, lr_mult)
        ws, r = D.world_size(), D.rank()
        sync_ctl = cfg.grad_accum > 1 and hasattr(model, "set_requires_gradient_sync")
        loss_sum: torch.Tensor | None = None
        metric_sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = self.source.get(self.step * cfg.grad_accum + micro)
            if ws > 1 and cfg.shard_batch:
                batch = shard_batch(batch, r, ws)
            batch = to_device(batch, self.device)
            if sync_ctl:  # FSDP2: reduce-scatter gradients only on the last micro-batch
                model.set_requires_gradient_sync(micro == cfg.grad_accum - 1)
            with self._autocast():
                out = self.loss_fn(model, batch)
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                raise ValueError("loss_fn must return a scalar loss tensor that requires grad (or (loss, metrics))")
            if not isinstance(metrics, dict):
                raise ValueError(f"loss_fn's metrics must be a dict, got {type(metrics).__name__}")
            (loss / cfg.grad_accum).backward()
            ld = loss.detach().reshape(()).to(torch.float64)
            loss_sum = ld if loss_sum is None else loss_sum + ld
            for k, v in metrics.items():
                s = _scalar(v, f"metric {k!r}").to(ld.device)
                metric_sums[k] = metric_sums[k] + s if k in metric_sums else s
        assert loss_sum is not None
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        # the norm now, the clipping after the finiteness check: a non-finite norm would turn every gradient into
        # NaN when clipped, hiding which parameter's gradient went bad (same arithmetic as clip_grad_norm_)
        total = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        gnorm = total.full_tensor() if hasattr(total, "full_tensor") else total  # DTensor norm under FSDP2
        keys = sorted(metric_sums)
        packed = torch.stack([loss_sum.to(gnorm.device) / cfg.grad_accum, gnorm.detach().to(torch.float64)]
                             + [metric_sums[k].to(gnorm.device) / cfg.grad_accum for k in keys])
        vals = D.all_reduce_mean(packed).tolist()  # one host sync per step; identical on every rank
        values = {"loss": vals[0], "grad_norm": vals[1], **dict(zip(keys, vals[2:]))}
        finite = math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])
        where = None if finite else self._nonfinite_source(values["loss"])
        if not finite and cfg.nonfinite == "raise":
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite {where} at step {self.step} (loss {values['loss']}, grad norm "
                                     f"{values['grad_norm']}); weights and optimizer state not updated, no "
                                     "checkpoint written for this step (TrainConfig.nonfinite='skip' skips such "
                                     "steps instead)")
        if not finite:
            self.skipped_steps += 1
            warnings.warn(f"step {self.step}: non-finite {where}; step skipped (weights and optimizer state "
                          "unchanged; counted in the logged 'skipped' and 'skipped_total')", RuntimeWarning,
                          stacklevel=2)
        if finite:
            if params and math.isfinite(max_norm):
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
            self.optimizer.step()  # runs QK-Clip and the MoE bias update as step post-hooks
            for hook in self.post_step:
                hook(self)
        values["skipped"] = 0.0 if finite else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.step += 1
        return values

    def _nonfinite_source(self, loss: float) -> str:
        """Where a non-finite step came from: ``"loss"``, or the first parameter (in ``named_parameters`` order)
        whose gradient holds a NaN or inf, with its module."""
        if not math.isfinite(loss):
            return "loss"
        for name, p in self.model.named_parameters():
            g = p.grad
            if g is None:
                continue
            if hasattr(g, "full_tensor"):  # DTensor under FSDP2
                g = g.full_tensor()
            if not bool(torch.isfinite(g).all()):
                module = name.rsplit(".", 1)[0] if "." in name else "(root)"
                return f"gradient in parameter {name!r} (module {module!r})"
        return "gradient norm (no single parameter's gradient is non-finite: the norm overflowed)"

    # ------------------------------------------------------------------ eval / checkpoints
    def evaluate(self) -> dict[str, Any]:
        """Run ``eval_fn`` (eval mode, no_grad, RNG isolated); log and return its record."""
        if self.eval_fn is None:
            raise ValueError("evaluate() needs an eval_fn")
        was_training = self.model.training
        rng = capture_rng_state()
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                out = self.eval_fn(self.model)
        finally:
            self.model.train(was_training)
            restore_rng_state(rng)  # evaluation must not shift the training random stream
        if not isinstance(out, dict):
            raise ValueError(f"eval_fn must return a dict of scalars, got {type(out).__name__}")
        keys = sorted(k for k, v in out.items()
                      if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool))  # non-numbers dropped
        vals = []
        if keys:
            packed = torch.stack([_scalar(out[k], f"eval metric {k!r}").to(self.device) for k in keys])
            vals = D.all_reduce_mean(packed).tolist()  # on the device: nccl reduces CUDA tensors only
        record = {"step": self.step, "split": "eval", **dict(zip(keys, vals))}
        self.last_eval = record
        self._write_record(record)
        self._emit("on_eval", record)
        return record

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step under ``out_dir/checkpoints`` (collective under torchrun)."""
        if self.ckpt_root is None:
            raise ValueError("save_checkpoint needs TrainConfig.out_dir")
        state = {"config": self.config.to_dict(), "optimizer_class": type(self.optimizer).__name__,
                 "skipped_steps": self.skipped_steps,
                 # where it ran: floating-point results can differ in the last digits across thread counts
                 "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                         "device": str(self.device), "world_size": D.world_size()}}
        rank_state = {"rng": capture_rng_state(), "data": self.source.state_dict()}
        try:
            json.dumps(rank_state["data"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"train_data.state_dict() must be JSON-serialisable: {e}") from e
        path = save_checkpoint(self.ckpt_root, self.step, self.model, self.optimizer, state, rank_state,
                               keep_last=self.config.keep_last)
        self._emit("on_checkpoint", path)
        return path

    def load_checkpoint(self, path: str | os.PathLike = "latest") -> int:
        """Restore model, optimiser, step, RNG and data state; returns the step. ``path="latest"``: the newest
        checkpoint of ``out_dir`` that verifies; otherwise a checkpoint dir (verified: CheckpointError or
        FileNotFoundError naming a damaged file), a checkpoints root or an out_dir (newest that verifies)."""
        if str(path) == "latest":
            if self.ckpt_root is None:
                raise ValueError("load_checkpoint('latest') needs TrainConfig.out_dir")
            path = self.ckpt_root
        state, rank_state = load_checkpoint(path, self.model, self.optimizer)
        saved = state.get("config", {})
        changed = [k for k in _TRAJECTORY_FIELDS if k in saved and saved[k] != self.config.to_dict()[k]]
        if changed:
            warnings.warn(f"resuming with different {changed} than the checkpoint at {path}: not an exact resume",
                          stacklevel=2)
        if rank_state is None:
            warnings.warn(f"checkpoint at {path} has no state for rank {D.rank()} (written by "
                          f"{state.get('world_size')} ranks): RNG and data state not restored", stacklevel=2)
        else:
            restore_rng_state(rank_state["rng"])
            self.source.load_state_dict(rank_state.get("data"))
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self._interval, self._interval_n = {}, 0
        self._truncate_metrics(self.step)
        return self.step

    def resume(self) -> bool:
        """Load ``out_dir``'s newest checkpoint that verifies (see :func:`~k25mini.train.checkpoint.
        latest_checkpoint`: damaged ones are passed over with a warning); returns whether there was one.
        Checkpoints that exist but none of which verifies raise CheckpointError rather than restarting."""
        from k25mini.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(self.ckpt_root) if self.ckpt_root is not None else None
        if found is None:
            return False
        self.load_checkpoint(found)
        return True

    # ------------------------------------------------------------------ the loop
    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def fit(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train from ``step`` to ``config.steps`` (or stop after step ``until``); returns ``history``.

        Logs every ``log_every`` steps (values averaged over the interval), evaluates every ``eval_every``
        steps and at the end, checkpoints every ``ckpt_every`` steps and at the end (when out_dir is set).
        """
        from tqdm.auto import tqdm

        cfg = self.config
        end = cfg.steps if until is None else min(int(until), cfg.steps)
        self._emit("on_train_begin")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.progress and D.rank() == 0))
        self._t0 = time.perf_counter()
        t_start, start_step = self._t0, self.step
        try:
            while self.step < end:
                values = self.train_step()
                for k, v in values.items():
                    self._interval[k] = self._interval.get(k, 0.0) + v
                self._interval_n += 1
                bar.update(1)
                last = self.step == cfg.steps
                if self._due(cfg.log_every) or last:
                    n = self._interval_n
                    record = {"step": self.step, "split": "train",
                              **{k: v / n for k, v in self._interval.items()}, "lr": values["lr"],
                              "skipped_total": self.skipped_steps, "time_s": time.perf_counter() - t_start,
                              "steps_per_s": (self.step - start_step) / max(time.perf_counter() - t_start, 1e-9)}
                    self._interval, self._interval_n = {}, 0
                    self._write_record(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")
                    self._emit("on_log", record)
                if self.eval_fn is not None and (self._due(cfg.eval_every) or (last and cfg.eval_at_end)):
                    self.evaluate()
                if self.ckpt_root is not None and (self._due(cfg.ckpt_every) or (last and cfg.save_final)):
                    self.save_checkpoint()
        finally:
            bar.close()
        self._emit("on_train_end")
        return self.history
