"""The reusable training loop (chapter 05 onward): ``Trainer`` + ``TrainConfig``.

    from k25mini.train import Trainer, TrainConfig, LivePlot
    cfg = TrainConfig(steps=300, lr=3e-3, warmup_steps=20, optimizer="muonclip", out_dir="runs/x", ckpt_every=100)
    trainer = Trainer(model, loss_fn, batch_at, cfg, eval_fn=eval_fn, callbacks=[LivePlot()])
    trainer.resume()   # no-op on a fresh out_dir
    trainer.fit()

Modules: config (TrainConfig), lr_schedule (warmup + cosine), data (the batch-source contract), checkpoint
(safetensors + JSON, atomic, sha256-verified, resumable), rng (JSON RNG state), distributed (torchrun / FSDP2),
liveplot.
"""

from k25mini.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from k25mini.train.config import DECAYS, OPTIMIZERS, TrainConfig
from k25mini.train.data import StatefulBatches, shard_batch, to_device
from k25mini.train.distributed import DistInfo, init_distributed, shard_model
from k25mini.train.liveplot import LivePlot, in_notebook
from k25mini.train.lr_schedule import lr_factor
from k25mini.train.rng import capture_rng_state, restore_rng_state, seed_everything
from k25mini.train.trainer import Callback, Trainer, make_optimizer

__all__ = [
    "CheckpointError",
    "DECAYS",
    "OPTIMIZERS",
    "Callback",
    "DistInfo",
    "LivePlot",
    "StatefulBatches",
    "TrainConfig",
    "Trainer",
    "capture_rng_state",
    "in_notebook",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "make_optimizer",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "shard_batch",
    "shard_model",
    "to_device",
    "verify_checkpoint",
]
