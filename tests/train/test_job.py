"""Training jobs (k25mini.train.job): a stage described as builder + JSON arguments runs through the entry point,
in this process or under torchrun, with the numbers of a hand-built Trainer; bad jobs name what is wrong."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

from k25mini.train import Trainer
from k25mini.train.job import JobParts, TrainJob, config_from_dict, launch, read_history, resolve_builder, run_job
from k25mini.train.toy import TOY_JOB, toy_job


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("builder", ["", "k25mini.train.toy", "k25mini.train.toy:", ":toy_job", "a b:c",
                                     "k25mini..toy:toy_job", 3])
def test_bad_builder_is_named(builder):
    with pytest.raises(ValueError, match="builder"):
        TrainJob(builder, {})


@pytest.mark.parametrize("args, needle", [
    ({"x": object()}, "JSON-serialisable"),
    ({"x": (1, 2)}, "round trip"),
    ({"x": float("nan")}, "JSON-serialisable"),
    ([("x", 1)], "dict"),
])
def test_bad_args_are_named(args, needle):
    with pytest.raises(ValueError, match=needle):
        TrainJob(TOY_JOB, args)


def test_argv_and_command_round_trip():
    job = TrainJob(TOY_JOB, {"steps": 3, "out": "runs/a b"})
    argv = job.argv()
    assert argv[:2] == ["--job", TOY_JOB] and json.loads(argv[3]) == {"steps": 3, "out": "runs/a b"}
    assert job.command(1).startswith("python -m k25mini.train --job k25mini.train.toy:toy_job --job-args ")
    assert job.command(2).startswith("torchrun --standalone --nproc-per-node=2 -m k25mini.train --job ")
    assert "'{\"out\": \"runs/a b\", \"steps\": 3}'" in job.command(2)  # quoted for a shell
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="nproc"):
            job.command(bad)


@pytest.mark.parametrize("spec, needle", [
    ("k25mini.no_such_module:f", "cannot import module"),
    ("k25mini.train.toy:no_such_fn", "no function"),
    ("k25mini.train.toy:TOY_JOB", "no function"),  # a string is not callable
    ("nope", "package.module:function"),
])
def test_resolve_builder_errors(spec, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_builder(spec)


def test_builder_must_return_job_parts():
    with pytest.raises(ValueError, match="must return a JobParts"):
        run_job("k25mini.train.toy:toy_batch_at", {"index": 0})


def test_config_from_dict_round_trips_tuples_and_rejects_unknown_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class C:
        a: int = 1
        pairs: tuple[tuple[str, float], ...] = (("x", 0.5),)
        names: tuple[str, ...] = ("p",)
        plain: list | None = None

    c = C(a=2, pairs=(("y", 0.1), ("z", 0.9)), names=("q", "r"), plain=[1, 2])
    d = json.loads(json.dumps({"a": 2, "pairs": [["y", 0.1], ["z", 0.9]], "names": ["q", "r"], "plain": [1, 2]}))
    assert config_from_dict(C, d) == c
    with pytest.raises(ValueError, match=r"no fields \['b'\]"):
        config_from_dict(C, {"b": 1})
    with pytest.raises(ValueError, match="dataclass"):
        config_from_dict(dict, {})


def test_in_process_launch_equals_a_hand_built_trainer(tmp_path):
    """launch(nproc=1) is the entry point in this process: the same records as building the Trainer by hand."""
    args = {"out": str(tmp_path / "job"), "steps": 6, "dropout": 0.1, "optimizer": "muon"}
    run = launch(TrainJob(TOY_JOB, args))
    parts = toy_job(**{**args, "out": str(tmp_path / "hand")})
    hand = Trainer(parts.model, parts.loss_fn, parts.train_data, parts.config)
    hand.fit()
    strip = ("time_s", "steps_per_s")
    a = [{k: v for k, v in r.items() if k not in strip} for r in run.history]
    b = [{k: v for k, v in r.items() if k not in strip} for r in hand.history]
    assert a == b and len(a) == 6  # bit for bit (dropout on: the RNG is seeded identically)
    assert run.world_size == 1 and run.step == 6 and not run.resumed and run.model is not None
    assert run.info == {"batch": 8}
    assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), hand.model.parameters()))
    rec = json.loads((tmp_path / "job" / "job.json").read_text())
    assert rec["builder"] == TOY_JOB and rec["args"] == args and rec["world_size"] == 1 and rec["step"] == 6
    assert read_history(tmp_path / "job") == run.history
    # a second launch of a finished job resumes and trains nothing more
    again = launch(TrainJob(TOY_JOB, args))
    assert again.resumed and again.step == 6 and again.history == read_history(tmp_path / "job")


def test_launch_on_several_processes_needs_an_out_argument():
    with pytest.raises(ValueError, match="'out'"):
        launch(TrainJob(TOY_JOB, {"steps": 2}), nproc=2)
    with pytest.raises(ValueError, match="job must be a TrainJob"):
        launch({"builder": TOY_JOB}, nproc=1)


def test_cli_rejects_bad_job_arguments(capsys):
    from k25mini.train.__main__ import main

    for argv, needle in ((["--job", "nope"], "package.module:function"),
                         (["--job", TOY_JOB, "--job-args", "[1]"], "JSON object"),
                         (["--job", TOY_JOB, "--job-args", "{bad"], "JSON object"),
                         (["--job", TOY_JOB, "--ep", "2"], "--ep"),
                         (["--job", "k25mini.train.toy:missing"], "no function")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and needle in capsys.readouterr().err, argv


def test_cli_runs_a_job_in_one_process(tmp_path, capsys):
    from k25mini.train.__main__ import main

    out = tmp_path / "cli"
    assert main(["--job", TOY_JOB, "--job-args", json.dumps({"out": str(out), "steps": 3})]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"job": TOY_JOB, "world_size": 1, "step": 3, "resumed": False, "out_dir": str(out)}
    assert [r["step"] for r in read_history(out)] == [1, 2, 3]


@pytest.mark.distributed
def test_two_process_job_matches_one_process(tmp_path):
    """torchrun with 2 gloo processes (FSDP2, each rank half of every batch) follows the one-process run: equal
    per-rank batch sizes make the mean of the ranks' mean losses the global mean, so losses agree to fp32
    round-off; a broken split (both ranks on the same half) would not."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    args = {"steps": 8, "optimizer": "adamw", "lr": 1e-2}
    one = launch(TrainJob(TOY_JOB, {**args, "out": str(tmp_path / "one")}))
    two = launch(TrainJob(TOY_JOB, {**args, "out": str(tmp_path / "two")}), nproc=2)
    assert two.world_size == 2 and two.step == 8 and two.model is None and two.info == {"batch": 8}
    l1 = [r["loss"] for r in one.history if r.get("split") == "train"]
    l2 = [r["loss"] for r in two.history if r.get("split") == "train"]
    assert len(l1) == len(l2) == 8
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5, (l1, l2)
    assert l1[-1] < l1[0]
    # its final checkpoint holds whole tensors that a one-process model loads
    from k25mini.train import load_weights
    from k25mini.train.toy import TinyCharMLP

    m = TinyCharMLP(dropout=0.0)
    load_weights(m, tmp_path / "two")
    diffs = [float((p - q).detach().abs().max()) for p, q in zip(m.parameters(), one.model.parameters())]
    assert max(diffs) < 1e-4 and all(math.isfinite(d) for d in diffs)
    assert "launch.log" in {p.name for p in (tmp_path / "two").iterdir()}


@pytest.mark.distributed
def test_failed_launch_raises_with_the_log_tail(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    job = TrainJob(TOY_JOB, {"out": str(tmp_path / "bad"), "steps": 2, "optimizer": "nonsense"})
    with pytest.raises(RuntimeError, match="failed") as e:
        launch(job, nproc=2)
    assert "optimizer" in str(e.value)


def test_job_parts_defaults():
    parts = toy_job(steps=1)
    assert isinstance(parts, JobParts) and parts.eval_fn is None and parts.callbacks == () and parts.info


def _media_batch():
    """3 media items over 4 rows: row 0 holds items 0 (2 pads) and 1 (1 pad), row 1 none, row 2 item 2 (3 pads)."""
    P = 9
    ids = torch.tensor([[P, P, P, 1, 2], [1, 2, 3, 4, 5], [1, P, P, P, 2], [3, 3, 3, 3, 3]])
    media = ["a", "b", "c"]
    counts = {"a": [2], "b": [1], "c": [1, 2]}  # per chunk, summed per item
    return {"input_ids": ids, "labels": ids.clone(), "media": media, "n": 7}, counts.__getitem__, P


def test_shard_rows_with_media_keeps_each_ranks_media():
    from k25mini.train.data import shard_rows_with_media

    batch, counts, pad = _media_batch()
    r0 = shard_rows_with_media(batch, 0, 2, counts, pad)
    r1 = shard_rows_with_media(batch, 1, 2, counts, pad)
    assert r0["media"] == ["a", "b"] and r1["media"] == ["c"]
    assert torch.equal(r0["input_ids"], batch["input_ids"][:2]) and torch.equal(r1["labels"], batch["labels"][2:])
    assert r0["n"] == 7  # non-tensor entries pass through
    quarters = [shard_rows_with_media(batch, r, 4, counts, pad)["media"] for r in range(4)]
    assert quarters == [["a", "b"], [], ["c"], []]
    assert shard_rows_with_media(batch, 0, 1, counts, pad)["media"] == ["a", "b", "c"]


def test_shard_rows_with_media_rejects_batches_that_do_not_line_up():
    from k25mini.train.data import shard_rows_with_media

    batch, counts, pad = _media_batch()
    with pytest.raises(ValueError, match="divisible"):
        shard_rows_with_media(batch, 0, 3, counts, pad)
    with pytest.raises(ValueError, match="different number"):
        shard_rows_with_media({**batch, "media": ["a", "b"]}, 0, 2, counts, pad)
    with pytest.raises(ValueError, match="does not follow"):
        shard_rows_with_media({**batch, "media": ["a", "c", "b"]}, 0, 2, counts, pad)
    with pytest.raises(ValueError, match="input_ids"):
        shard_rows_with_media({**batch, "input_ids": batch["input_ids"][0]}, 0, 2, counts, pad)


def test_media_shard_fn_binds_the_models_counts_and_pad():
    from types import SimpleNamespace

    from k25mini.train.data import media_shard_fn

    batch, counts, pad = _media_batch()
    fn = media_shard_fn(SimpleNamespace(media_token_counts=counts, pad_id=pad))
    assert fn(batch, 1, 2)["media"] == ["c"]
    assert [fn(batch, r, 4)["media"] for r in range(4)] == [["a", "b"], [], ["c"], []]
    with pytest.raises(ValueError, match="media_token_counts"):
        media_shard_fn(SimpleNamespace(pad_id=pad))
    with pytest.raises(ValueError, match="pad_id"):
        media_shard_fn(SimpleNamespace(media_token_counts=counts))
