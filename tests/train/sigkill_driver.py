"""SIGKILL-and-resume trials for the checkpoint code (issue #22, part 3).

One uninterrupted reference run trains the toy model (k25mini.train.toy) for STEPS steps with a checkpoint
after every step. Then chains of runs share one out_dir: each run resumes from ``latest`` and is killed with
SIGKILL at a randomly drawn instrumentation point (fixed seed), until a run reaches the end. The points cover
the step (after each micro-batch forward, after the optimiser step) and the checkpoint write (after each
file, around every rename, fsync and delete) and the resume itself. At each point the child blocks until the
parent says go, so a kill lands exactly at the drawn point, reproducibly.

After every kill the parent checks that ``latest_checkpoint`` finds a checkpoint that verifies without any
fallback warning, and that its files are byte-identical (same sha256) to the reference checkpoint of the same
step: that is the state the next run resumes from. It then copies the killed run's out_dir to
``resumed_NN`` and resumes that copy to the end without a kill; its final checkpoint must equal the
reference's final one. The chain itself goes on from the original out_dir (so kills also land in runs that
were themselves resumed after a kill), and its final checkpoint is compared with the reference's too.
Children are forked from this process after torch is imported and before it computes anything, so a run
costs tens of milliseconds instead of a fresh interpreter.

    python tests/train/sigkill_driver.py OUT_DIR [--kills 40] [--seed 0] [--json result.json] [--table]

Prints a JSON summary (and with --table a Markdown table of the trials). Exit status 0 iff every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (torch.optim imports it lazily on first use: ~1 s, paid once here)
import tqdm.auto  # noqa: E402,F401  (imported here, once, rather than in every forked child)

import k25mini.optim  # noqa: E402,F401
import k25mini.train.checkpoint as ckpt_mod  # noqa: E402
from k25mini.train import TrainConfig, Trainer, latest_checkpoint  # noqa: E402
from k25mini.train.toy import TinyCharMLP, toy_batch_at, toy_loss  # noqa: E402

STEPS = 8
COMPARED = ("model.safetensors", "optimizer.safetensors", "rank_00000.json")


def _config(out_dir: Path, keep_last: int) -> TrainConfig:
    return TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=2, grad_accum=2, log_every=1, ckpt_every=1,
                       keep_last=keep_last, out_dir=str(out_dir), progress=False, seed=3, grad_clip=1.0,
                       optimizer="adamw")


# ----------------------------------------------------------------------------- the child (forked)
def _child(out_dir: Path, keep_last: int, ev_w: int, go_r: int) -> None:
    torch.set_num_threads(1)
    where: dict = {"phase": "start", "trainer": None}

    def event(what: str) -> None:
        step = where["trainer"].step if where["trainer"] is not None else 0
        os.write(ev_w, f"{where['phase']}|{what}|{step}\n".encode())
        if os.read(go_r, 1) != b"g":  # the parent went away
            os._exit(3)

    real_replace, real_rmtree = os.replace, ckpt_mod.shutil.rmtree
    real_json, real_tensors, real_fsync_dir = ckpt_mod._write_json, ckpt_mod._write_tensors, ckpt_mod._fsync_dir

    def replace(src, dst):
        event(f"before rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)
        event(f"after rename {Path(src).name} -> {Path(dst).name}")

    def rmtree(path, *a, **k):
        event(f"before delete {Path(path).name}")
        real_rmtree(path, *a, **k)

    def write_json(path, obj):
        event(f"before write {path.name}")
        real_json(path, obj)
        event(f"after write {path.name}")

    def write_tensors(path, tensors):
        event(f"before write {path.name}")
        real_tensors(path, tensors)
        event(f"after write {path.name}")

    def fsync_dir(path):
        real_fsync_dir(path)
        event(f"after fsync dir {path.name}")

    os.replace, ckpt_mod.shutil.rmtree = replace, rmtree
    ckpt_mod._write_json, ckpt_mod._write_tensors, ckpt_mod._fsync_dir = write_json, write_tensors, fsync_dir

    def loss_fn(model, batch):
        out = toy_loss(model, batch)
        event("after forward")
        return out

    torch.manual_seed(0)
    trainer = Trainer(TinyCharMLP(), loss_fn, toy_batch_at, _config(out_dir, keep_last))
    where["trainer"] = trainer
    trainer.optimizer.register_step_post_hook(lambda *_: event("after optimizer step"))
    real_save = trainer.save_checkpoint

    def save():
        where["phase"] = "save"
        path = real_save()
        where["phase"] = "step"
        return path

    trainer.save_checkpoint = save
    where["phase"] = "resume"
    trainer.resume()
    where["phase"] = "step"
    trainer.fit()


def run_child(out_dir: Path, keep_last: int, kill_at: tuple[str, int] | None) -> tuple[list[str], bool]:
    """Fork a training run on ``out_dir``; ``kill_at=(phase, n)``: SIGKILL it at its n-th event (1-based) of
    that phase ("step", "save" or "resume"); None: never. Returns (events seen, killed)."""
    ev_r, ev_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(ev_r)
        os.close(go_w)
        code = 0
        try:
            _child(out_dir, keep_last, ev_w, go_r)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(ev_w)
    os.close(go_r)
    events: list[str] = []
    killed = False
    with os.fdopen(ev_r, "r") as f:
        for line in f:
            events.append(line.rstrip("\n"))
            if kill_at is not None and sum(e.startswith(kill_at[0] + "|") for e in events) == kill_at[1]:
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            os.write(go_w, b"g")
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    if killed:
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise RuntimeError(f"child was to die by SIGKILL, status {status}")
    elif not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise RuntimeError(f"child run on {out_dir} failed (status {status}); its traceback is on stderr")
    return events, killed


# ----------------------------------------------------------------------------- comparisons (no torch compute)
def _fingerprint(ckpt: Path) -> dict:
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return {"step": state["step"], "files": {n: state["files"][n]["sha256"] for n in COMPARED},
            "optimizer": state["optimizer"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    ref_dir = args.out_dir / "reference"
    ref_events, _ = run_child(ref_dir, keep_last=STEPS, kill_at=None)
    ref = {int(p.name.split("_")[1]): _fingerprint(p) for p in ckpt_mod.list_checkpoints(ref_dir / "checkpoints")}
    if sorted(ref) != list(range(1, STEPS + 1)):
        raise RuntimeError(f"reference run left checkpoints {sorted(ref)}")
    # events per step of each phase in the reference (about 3 in the step, 15 in the save)
    per_step = {ph: max(1, sum(e.startswith(ph + "|") for e in ref_events) // STEPS) for ph in ("step", "save")}

    trials: list[dict] = []
    chains: list[dict] = []
    while len(trials) < args.kills:
        chain = len(chains)
        out = args.out_dir / f"chain_{chain:02d}"
        runs = 0
        while True:
            root = out / "checkpoints"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cur = latest_checkpoint(root)
            start = 0 if cur is None else int(cur.name.split("_")[1])
            # the phase first (step compute and checkpoint writing alike), then a point of it within about the
            # next two steps, so that a chain walks through every step; a run with fewer such events left
            # finishes, and the chain ends
            kill_at = None
            if len(trials) < args.kills:
                phase = rng.choices(["step", "save", "resume"], weights=[0.45, 0.45, 0.1])[0]
                kill_at = (phase, rng.randint(1, 3 if phase == "resume" else 2 * per_step[phase]))
            events, killed = run_child(out, keep_last=2, kill_at=kill_at)
            runs += 1
            if not killed:
                break
            phase, what, step = events[-1].split("|")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                latest = latest_checkpoint(root)
            rec = {"trial": len(trials) + 1, "chain": chain, "resumed_from": start, "kill_event": list(kill_at),
                   "phase": phase, "point": what, "steps_done": int(step),
                   "latest": None if latest is None else int(latest.name.split("_")[1]),
                   "fallback_warnings": [str(w.message) for w in caught]}
            rec["bit_exact"] = latest is None or _fingerprint(latest) == ref[rec["latest"]]
            # resume this very state to the end, uninterrupted, on a copy (the chain goes on from the original)
            copy = args.out_dir / f"resumed_{rec['trial']:02d}"
            shutil.copytree(out, copy, symlinks=True)
            run_child(copy, keep_last=2, kill_at=None)
            end = latest_checkpoint(copy / "checkpoints")
            rec["resumed_to_end"] = None if end is None else str(end.relative_to(args.out_dir))
            rec["resumed_to_end_bit_exact"] = end is not None and _fingerprint(end) == ref[STEPS]
            rec["ok"] = rec["bit_exact"] and rec["resumed_to_end_bit_exact"] and not rec["fallback_warnings"]
            trials.append(rec)
        final = latest_checkpoint(out / "checkpoints")
        chains.append({"chain": chain, "runs": runs, "final_step": int(final.name.split("_")[1]),
                       "final_bit_exact": _fingerprint(final) == ref[STEPS]})

    ok = all(t["ok"] for t in trials) and all(c["final_bit_exact"] and c["final_step"] == STEPS for c in chains)
    summary = {"ok": ok, "steps": STEPS, "reference_events": len(ref_events), "kills": len(trials),
               "kills_in_step": sum(t["phase"] == "step" for t in trials),
               "kills_in_save": sum(t["phase"] == "save" for t in trials),
               "kills_in_resume": sum(t["phase"] == "resume" for t in trials),
               "chains": chains, "trials": trials}
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if args.table:
        print("| trial | chain | resumed from | killed while | at | `latest` after the kill | "
              "it equals the reference's | resumed to the end: equals the reference's |")
        print("|---|---|---|---|---|---|---|---|")
        yes = {True: "yes", False: "NO"}
        for t in trials:
            n = t["steps_done"]
            during = {"step": f"computing step {n + 1}", "save": f"saving step {n}", "resume": "resuming"}
            clean = t["bit_exact"] and not t["fallback_warnings"]
            latest = "none" if t["latest"] is None else t["latest"]
            print(f"| {t['trial']} | {t['chain']} | {t['resumed_from']} | {during[t['phase']]} | {t['point']} | "
                  f"{latest} | {yes[clean]} | {yes[t['resumed_to_end_bit_exact']]} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
