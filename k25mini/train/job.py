"""Training jobs: how an experiment's training stage runs through the one entry point, ``python -m k25mini.train``.

An experiment describes a stage as a :class:`TrainJob`: a *builder*, named by its import path
(``"package.module:function"``), and the builder's keyword arguments as JSON. The builder returns the
:class:`JobParts` (model, loss, data, :class:`~k25mini.train.TrainConfig`, optional eval function). The same
description runs in two ways, with the same numbers on one process:

    run = launch(job)                # nproc=1: in this process (a notebook's LivePlot callback attaches here)
    run = launch(job, nproc=2)       # torchrun --nproc-per-node 2 -m k25mini.train --job ... --job-args ...
    print(job.command(nproc=2))      # the command line an engineer runs by hand

Under torchrun (world size W > 1) the job is data parallel: every process builds the same model and data (the
builder is deterministic), FSDP2 ``fully_shard`` shards the model over the W ranks
(:func:`k25mini.train.distributed.shard_model`: one unit per decoder layer and per vision block), each rank trains
on its slice of every global micro-batch (``TrainConfig.shard_batch``), and MuonClip becomes
:class:`~k25mini.train.parallel.ShardedMuonClip` (Newton-Schulz on gathered whole matrices, QK-Clip max logits
max-reduced over the world). Expert parallelism is the toy run's (``--ep``); a job runs with ep = 1.

Rank 0 writes ``out_dir/job.json`` (builder, arguments, world size, whether it resumed, the builder's ``info``) next
to the Trainer's ``metrics.jsonl`` and checkpoints, so a parent process reads the outcome from disk.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from k25mini.train.config import TrainConfig

__all__ = ["JobParts", "TrainJob", "JobRun", "resolve_builder", "run_job", "launch", "config_from_dict",
           "read_history"]

_BUILDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class JobParts:
    """What a builder returns: everything the :class:`~k25mini.train.Trainer` needs, plus ``info`` (a JSON-able
    dict the job records in ``job.json``, e.g. token counts of the data it built) and ``forward_methods``: the
    model's methods other than ``forward`` that the loss calls (FSDP2 gathers the root's parameters only around
    ``forward`` and the methods registered with ``register_fsdp_forward_method``; those the model lacks are
    skipped). ``shard_fn(batch, rank, world_size)`` replaces :func:`~k25mini.train.data.shard_batch` under
    torchrun (e.g. :func:`~k25mini.train.data.shard_rows_with_media` for batches with a media list)."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], Any]
    train_data: Any
    config: TrainConfig
    eval_fn: Callable[[nn.Module], dict[str, Any]] | None = None
    callbacks: Sequence[Any] = ()
    post_step: Sequence[Callable[[Any], Any]] = ()
    info: dict[str, Any] = field(default_factory=dict)
    forward_methods: Sequence[str] = ("loss",)
    shard_fn: Callable[[Any, int, int], Any] | None = None


@dataclass(frozen=True)
class TrainJob:
    """A training stage as data: ``builder`` (``"package.module:function"``) and its JSON keyword ``args``."""

    builder: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.builder, str) or not _BUILDER.match(self.builder):
            raise ValueError(f"builder must be 'package.module:function', got {self.builder!r}")
        if not isinstance(self.args, Mapping):
            raise ValueError(f"args must be a dict of keyword arguments, got {type(self.args).__name__}")
        try:
            text = json.dumps(dict(self.args), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"args must be JSON-serialisable (they travel on the command line): {e}") from None
        if json.loads(text) != dict(self.args):
            raise ValueError("args must survive a JSON round trip unchanged (use lists, not tuples; str keys)")

    def argv(self) -> list[str]:
        """The entry point's arguments for this job."""
        return ["--job", self.builder, "--job-args", json.dumps(dict(self.args), sort_keys=True)]

    def command(self, nproc: int = 1) -> str:
        """The shell command that runs this job on ``nproc`` processes."""
        _check_nproc(nproc)
        head = ["python", "-m", "k25mini.train"] if nproc == 1 else \
            ["torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "k25mini.train"]
        return shlex.join(head + self.argv())


@dataclass
class JobRun:
    """The outcome of a job: ``history`` (logged records), ``resumed``, the final ``step``, ``world_size``, the
    builder's ``info``; ``model`` is the trained model when the job ran in this process (None under torchrun:
    load it from ``out_dir``'s checkpoint)."""

    out_dir: Path | None
    history: list[dict[str, Any]]
    resumed: bool
    step: int
    world_size: int
    info: dict[str, Any]
    model: nn.Module | None = None


def _check_nproc(nproc: Any) -> None:
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")


def resolve_builder(spec: str) -> Callable[..., JobParts]:
    """Import ``"package.module:function"``; a clear ValueError when it cannot be found."""
    if not isinstance(spec, str) or not _BUILDER.match(spec):
        raise ValueError(f"--job must be 'package.module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"--job {spec!r}: cannot import module {mod_name!r} ({e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--job {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Rebuild a (frozen) dataclass config from its ``to_dict()``: lists become tuples where the field's default
    is a tuple (recursively), unknown keys raise. Builders use it to receive configs through JSON."""
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"cls must be a dataclass, got {cls!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    kw = {}
    for k, v in d.items():
        f = fields[k]
        default = f.default if f.default is not dataclasses.MISSING else None
        kw[k] = tup(v) if isinstance(default, tuple) else v
    return cls(**kw)


def read_history(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl`` (empty when absent)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_job(builder: str, args: Mapping[str, Any], *, callbacks: Iterable[Any] = (), resume: bool = True
            ) -> JobRun:
    """Build the job and train it with the :class:`~k25mini.train.Trainer` on this process, or on every
    process of a torchrun launch (data parallel, FSDP2). What ``python -m k25mini.train --job`` calls."""
    from k25mini.train.distributed import init_distributed, shard_model
    from k25mini.train.trainer import Trainer

    info = init_distributed()
    parts = resolve_builder(builder)(**dict(args))
    if not isinstance(parts, JobParts):
        raise ValueError(f"--job {builder!r} must return a JobParts, got {type(parts).__name__}")
    cfg, model, optimizer = parts.config, parts.model, None
    if info.world_size > 1:
        if cfg.out_dir is None:
            raise ValueError("a job on more than one process needs TrainConfig.out_dir (the parent reads it)")
        from torch.distributed.fsdp import register_fsdp_forward_method

        model = shard_model(model.to(info.device))
        for name in parts.forward_methods:
            if callable(getattr(model, name, None)):
                register_fsdp_forward_method(model, name)
        if cfg.optimizer == "muonclip":
            from k25mini.train.parallel import build_parallel_optimizer

            if cfg.adamw_lr is not None and cfg.adamw_lr != cfg.lr:
                raise ValueError("a sharded muonclip job shares one lr (TrainConfig.adamw_lr must be None or lr)")
            tau = 100.0 if cfg.qk_clip_tau is None else cfg.qk_clip_tau
            optimizer = build_parallel_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, qk_clip_tau=tau,
                                                 betas=cfg.betas, eps=cfg.eps)
    data = parts.train_data
    if info.world_size > 1 and parts.shard_fn is not None and cfg.shard_batch:
        if not callable(data):
            raise ValueError("JobParts.shard_fn needs train_data to be a batch_at(index) callable")
        whole, cut, r, w = data, parts.shard_fn, info.rank, info.world_size

        def data(i: int) -> Any:
            return cut(whole(i), r, w)

        cfg = dataclasses.replace(cfg, shard_batch=False)  # this rank's slice is cut above
    tr = Trainer(model, parts.loss_fn, data, cfg, eval_fn=parts.eval_fn,
                 callbacks=[*parts.callbacks, *callbacks], optimizer=optimizer, post_step=parts.post_step)
    resumed = bool(tr.resume()) if resume else False
    tr.fit()
    if info.rank == 0 and tr.out_dir is not None:
        tr.out_dir.mkdir(parents=True, exist_ok=True)
        rec = {"builder": builder, "args": dict(args), "world_size": info.world_size, "resumed": resumed,
               "step": tr.step, "info": parts.info}
        tmp = tr.out_dir / f".job.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, tr.out_dir / "job.json")
    return JobRun(tr.out_dir, tr.history, resumed, tr.step, info.world_size, dict(parts.info), model)


def launch(job: TrainJob, *, nproc: int = 1, callbacks: Iterable[Any] = (), threads: int | None = None,
           log: Callable[[str], Any] | None = None) -> JobRun:
    """Run ``job`` through the entry point: in this process when ``nproc == 1``, else as
    ``torchrun --standalone --nproc-per-node nproc -m k25mini.train --job ...`` (``threads`` torch threads per
    process, default 1). ``callbacks`` attach only in this process. A failed launch raises with the log's tail;
    the child's output is kept in ``out_dir/launch.log``."""
    from k25mini.train.cli import build_parser

    if not isinstance(job, TrainJob):
        raise ValueError(f"job must be a TrainJob, got {type(job).__name__}")
    _check_nproc(nproc)
    a = build_parser().parse_args(job.argv())  # the entry point's own parsing: what torchrun would see
    args = json.loads(a.job_args)
    if nproc == 1:
        return run_job(a.job, args, callbacks=callbacks)
    cbs = list(callbacks)
    if cbs:
        warnings.warn(f"launch(nproc={nproc}): {len(cbs)} callback(s) stay in this process and are not run",
                      RuntimeWarning, stacklevel=2)
    out = args.get("out")
    if not isinstance(out, str):
        raise ValueError("a job launched on more than one process needs an 'out' argument (its out_dir)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads or 1)
    here = str(Path(__file__).resolve().parents[2])  # the children import this checkout's k25mini
    env["PYTHONPATH"] = os.pathsep.join([here, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "k25mini.train", *job.argv()]
    if threads:
        cmd += ["--threads", str(threads)]
    if log is not None:
        log(f"launching: {job.command(nproc)}")
    logfile, rec_path = out_dir / "launch.log", out_dir / "job.json"
    rec_path.unlink(missing_ok=True)  # an earlier launch's record must not pass for this one's
    with open(logfile, "w", encoding="utf-8") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0 or not rec_path.is_file():
        tail = "\n".join(logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{job.command(nproc)} failed (exit {rc}); last lines of {logfile}:\n{tail}")
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    return JobRun(out_dir, read_history(out_dir), bool(rec["resumed"]), int(rec["step"]), int(rec["world_size"]),
                  dict(rec.get("info", {})), None)
