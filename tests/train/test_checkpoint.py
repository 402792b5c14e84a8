"""Checkpoints: bit-exact resume (AdamW, Muon, MuonClip), atomic writes, keep_last, bad paths, no pickle."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import k25mini.train.checkpoint as ckpt_mod
from k25mini.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    resolve_checkpoint,
    restore_rng_state,
    verify_checkpoint,
)
from k25mini.train.toy import TinyCharMLP, ToyStream, toy_batch_at, toy_loss

N_STEPS, CKPT_EVERY, KILL_AT = 10, 4, 6  # checkpoint at 4 and 8; the "kill" after step 6 loses steps 5-6


def _cfg(out_dir, **kw) -> TrainConfig:
    base = dict(steps=N_STEPS, lr=1e-2, warmup_steps=2, grad_accum=2, log_every=2, ckpt_every=CKPT_EVERY,
                out_dir=str(out_dir), progress=False, seed=3, grad_clip=1.0)
    base.update(kw)
    return TrainConfig(**base)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _scramble_process_state() -> None:
    """What a fresh process would have: different RNG states everywhere."""
    torch.manual_seed(987654)
    random.seed(12)
    np.random.seed(34)


def _run_straight(tmp_path, make_model, data, **kw):
    torch.manual_seed(0)
    model = make_model()
    tr = Trainer(model, toy_loss, data(), _cfg(tmp_path / "straight", **kw))
    tr.fit()
    return model, tr


def _run_killed_and_resumed(tmp_path, make_model, data, **kw):
    torch.manual_seed(0)
    model = make_model()
    Trainer(model, toy_loss, data(), _cfg(tmp_path / "resumed", **kw)).fit(until=KILL_AT)
    del model
    _scramble_process_state()
    model2 = make_model()  # different init: everything must come from the checkpoint
    tr = Trainer(model2, toy_loss, data(), _cfg(tmp_path / "resumed", **kw))
    assert tr.resume() is True
    assert tr.step == CKPT_EVERY
    tr.fit()
    return model2, tr


def _assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"


def _train_losses(tr: Trainer) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in tr.history if r["split"] == "train"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    a, tra = _run_straight(tmp_path, TinyCharMLP, lambda: toy_batch_at, optimizer=optimizer)
    b, trb = _run_killed_and_resumed(tmp_path, TinyCharMLP, lambda: toy_batch_at, optimizer=optimizer)
    _assert_bit_identical(a, b)
    # the logged curve of the resumed run (metrics.jsonl, truncated at the resume point) is the straight one
    assert _train_losses(tra) == _train_losses(trb)
    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(2, N_STEPS + 1, 2))
    # optimiser state too (e.g. AdamW moments / Muon momentum), not only the weights
    sa, sb = tra.optimizer.state_dict()["state"], trb.optimizer.state_dict()["state"]
    assert len(sa) > 0 and sa.keys() == sb.keys()  # an empty state would compare nothing
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][k])), (i, k)


def test_resume_restores_rng_dropout_matters(tmp_path):
    """Control: without restoring the RNG state the resumed run differs, so the test above can fail."""
    torch.manual_seed(0)
    a = TinyCharMLP()
    Trainer(a, toy_loss, toy_batch_at, _cfg(tmp_path / "s")).fit()
    torch.manual_seed(0)
    b = TinyCharMLP()
    Trainer(b, toy_loss, toy_batch_at, _cfg(tmp_path / "r")).fit(until=KILL_AT)
    tr = Trainer(b, toy_loss, toy_batch_at, _cfg(tmp_path / "r"))
    real_restore = ckpt_mod.load_checkpoint

    def load_without_rng(*args, **kw):
        state, rank_state = real_restore(*args, **kw)
        rank_state["rng"] = capture_rng_state()  # pretend the RNG was not saved
        return state, rank_state

    import k25mini.train.trainer as trainer_mod

    orig = trainer_mod.load_checkpoint
    trainer_mod.load_checkpoint = load_without_rng
    try:
        _scramble_process_state()
        tr.resume()
    finally:
        trainer_mod.load_checkpoint = orig
    tr.fit()
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_with_stateful_iterator(tmp_path):
    a, _ = _run_straight(tmp_path, TinyCharMLP, lambda: ToyStream(seed=5))
    b, trb = _run_killed_and_resumed(tmp_path, TinyCharMLP, lambda: ToyStream(seed=5))
    _assert_bit_identical(a, b)
    assert trb.source.data.pos == N_STEPS * 2  # grad_accum=2 micro-batches per step


def test_resume_muonclip_k2_model(tmp_path):
    """MuonClip (QK-Clip hook) + aux-loss-free MoE bias on a tiny K2 decoder: still bit-exact."""
    import k25mini.model.decoder as decoder  # our own module: a broken import must fail here, not skip
    from k25mini.config import TextConfig

    cfg = TextConfig(vocab_size=32, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                     num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
                     qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
                     num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                     max_position_embeddings=64)

    def lm_batch(index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        return {"input_ids": torch.randint(32, (2, 12), generator=g)}

    def lm_loss(model, batch):
        return model.loss(batch["input_ids"], labels=batch["input_ids"])

    def make():
        return decoder.K2ForCausalLM(cfg)

    # tau small enough that QK-Clip actually fires during the run
    kw = dict(optimizer="muonclip", qk_clip_tau=0.05, grad_accum=1, steps=6, ckpt_every=2)
    torch.manual_seed(0)
    a = make()
    tra = Trainer(a, lm_loss, lm_batch, _cfg(tmp_path / "s", **kw))
    tra.fit()
    assert sum(h["clipped_heads"] for h in tra.optimizer.qk_clip.history) > 0
    bias = [n for n, _ in a.named_buffers() if "e_score_correction_bias" in n]
    assert bias and any(a.get_buffer(n).abs().sum() > 0 for n in bias)  # the MoE bias did move
    torch.manual_seed(0)
    b = make()
    Trainer(b, lm_loss, lm_batch, _cfg(tmp_path / "r", **kw)).fit(until=3)
    _scramble_process_state()
    b = make()
    trb = Trainer(b, lm_loss, lm_batch, _cfg(tmp_path / "r", **kw))
    assert trb.load_checkpoint("latest") == 2
    trb.fit()
    _assert_bit_identical(a, b)


# ----------------------------------------------------------------------------- atomicity
def _quick_trainer(out_dir, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(TinyCharMLP(), toy_loss, toy_batch_at,
                   _cfg(out_dir, steps=8, grad_accum=1, ckpt_every=2, save_final=False, **kw))


@pytest.mark.parametrize("fail_on", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_interrupted_write_keeps_latest(tmp_path, monkeypatch, fail_on):
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)
    root = tmp_path / "checkpoints"
    good = latest_checkpoint(root)
    assert good is not None and good.name == "step_00000002"
    real_json, real_tensors = ckpt_mod._write_json, ckpt_mod._write_tensors

    def boom_json(path, obj):
        if path.name == fail_on:
            path.write_text('{"format": "trunc')  # a half-written file, then the "crash"
            raise KeyboardInterrupt("killed mid-write")
        real_json(path, obj)

    def boom_tensors(path, tensors):
        if path.name == fail_on:
            path.write_bytes(b"\x00" * 7)
            raise KeyboardInterrupt("killed mid-write")
        real_tensors(path, tensors)

    monkeypatch.setattr(ckpt_mod, "_write_json", boom_json)
    monkeypatch.setattr(ckpt_mod, "_write_tensors", boom_tensors)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(until=4)
    assert latest_checkpoint(root) == good
    assert not (root / "step_00000004").exists()
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002"]
    monkeypatch.undo()
    fresh = _quick_trainer(tmp_path)
    assert fresh.load_checkpoint("latest") == 2


def test_hard_kill_debris_is_ignored_and_cleaned(tmp_path):
    """A SIGKILL leaves a .tmp dir (no cleanup ran) and maybe a half-written pointer temp file."""
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)
    root = tmp_path / "checkpoints"
    debris = root / ".tmp-step_00000004"
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"garbage")
    (root / ".latest.tmp").write_text("step_00000004")
    assert resolve_checkpoint(tmp_path).name == "step_00000002"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002"]
    tr.fit(until=4)
    assert not debris.exists() and latest_checkpoint(root).name == "step_00000004"


def test_keep_last_and_resave_same_step(tmp_path):
    tr = _quick_trainer(tmp_path, keep_last=2)
    tr.fit()
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000006", "step_00000008"]
    before = (root / "step_00000008" / "model.safetensors").read_bytes()
    tr.save_checkpoint()  # same step again: replaced atomically, still complete
    assert (root / "step_00000008" / "model.safetensors").read_bytes() == before
    assert latest_checkpoint(root).name == "step_00000008"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006", "step_00000008"]


@pytest.mark.parametrize("keep_last", [1, 2])
def test_kill_between_the_renames_of_a_resave_loses_nothing(tmp_path, monkeypatch, keep_last):
    """Re-saving the step ``latest`` names moves the old copy to .old-step_N, then the new one in. A kill between
    the two renames leaves no step_N: the old copy is used (with a warning) and put back by the next save."""
    tr = _quick_trainer(tmp_path, keep_last=keep_last)
    tr.fit(until=4)
    root = tmp_path / "checkpoints"
    before = {f: (root / "step_00000004" / f).read_bytes() for f in ("model.safetensors", "optimizer.safetensors")}
    real_replace = os.replace

    def killed_replace(src, dst):
        if Path(src).name == ".tmp-step_00000004":
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", killed_replace)
    with pytest.raises(KeyboardInterrupt):
        tr.save_checkpoint()
    monkeypatch.undo()
    assert not (root / "step_00000004").exists() and (root / ".old-step_00000004").is_dir()
    with pytest.warns(UserWarning, match="step_00000004"):
        found = latest_checkpoint(root)
    assert found.name == ".old-step_00000004"  # the only copy of step 4, even with keep_last=1
    fresh = _quick_trainer(tmp_path, keep_last=keep_last)
    with pytest.warns(UserWarning, match="step_00000004"):
        assert fresh.resume() and fresh.step == 4
    _assert_bit_identical(fresh.model, tr.model)
    fresh.fit(until=6)
    left = [p.name for p in list_checkpoints(root)]
    assert left == ["step_00000004", "step_00000006"][-keep_last:]
    assert not (root / ".old-step_00000004").exists()
    if keep_last == 2:  # put back intact
        verify_checkpoint(root / "step_00000004")
        assert {f: (root / "step_00000004" / f).read_bytes() for f in before} == before


@pytest.mark.parametrize("arg,value", [("keep_last", 0), ("keep_last", 1.5), ("step", -1), ("step", True)])
def test_save_checkpoint_rejects_bad_arguments(tmp_path, arg, value):
    tr = _quick_trainer(tmp_path)
    kw = {"step": 1, "keep_last": 2, arg: value}
    with pytest.raises(ValueError, match=arg):
        ckpt_mod.save_checkpoint(tmp_path / "ck", kw["step"], tr.model, tr.optimizer, {}, {}, keep_last=kw["keep_last"])
    assert not (tmp_path / "ck").exists()


def test_saving_after_a_rewind_drops_the_abandoned_later_checkpoints(tmp_path):
    """Resuming from an earlier step abandons the later checkpoints: ``latest`` never reaches them again, and
    kept they would later pass as fallbacks of the new run. The first save of the new run removes them."""
    tr = _quick_trainer(tmp_path, keep_last=3)
    tr.fit(until=6)
    root = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000006"]
    torch.manual_seed(0)
    again = Trainer(TinyCharMLP(), toy_loss, toy_batch_at,
                    _cfg(tmp_path, steps=8, grad_accum=1, ckpt_every=1, save_final=False, keep_last=3))
    again.load_checkpoint(root / "step_00000002")
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000006"]
    again.fit(until=3)
    assert [p.name for p in list_checkpoints(root)] == ["step_00000002", "step_00000003"]
    assert latest_checkpoint(root).name == "step_00000003"


# ----------------------------------------------------------------------------- bad paths / safety
def test_bad_paths_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_checkpoint(missing)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        resolve_checkpoint(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        resolve_checkpoint(empty)
    tr = _quick_trainer(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="nope"):
        tr.load_checkpoint(missing)
    assert tr.resume() is False  # nothing saved yet: not an error
    no_out = Trainer(TinyCharMLP(), toy_loss, toy_batch_at, TrainConfig(steps=2, progress=False))
    with pytest.raises(ValueError, match="out_dir"):
        no_out.load_checkpoint("latest")


@pytest.mark.parametrize("damage", ["state_json", "model_file", "missing_optim", "wrong_model"])
def test_corrupt_checkpoints_raise_clearly(tmp_path, damage):
    """The only checkpoint is damaged: there is nothing to fall back to, so loading raises naming the file."""
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)
    ck = tmp_path / "checkpoints" / "step_00000002"
    target: object = tr
    if damage == "state_json":
        (ck / "state.json").write_text("{not json")
        err, needle = CheckpointError, "state.json"
    elif damage == "model_file":
        (ck / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
        err, needle = CheckpointError, "model.safetensors"
    elif damage == "missing_optim":
        (ck / "optimizer.safetensors").unlink()
        with pytest.raises(FileNotFoundError, match="optimizer.safetensors"):
            tr.load_checkpoint(ck)  # a checkpoint named directly: the plain error
        err, needle = CheckpointError, "optimizer.safetensors"
    else:
        target = Trainer(TinyCharMLP(hidden=8), toy_loss, toy_batch_at, _cfg(tmp_path, progress=False))
        err, needle = ValueError, "step_00000002"
    with pytest.raises(err, match=needle):
        target.load_checkpoint("latest")
    if damage != "wrong_model":
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            _quick_trainer(tmp_path).resume()  # never a silent restart from scratch over a damaged run


def _flip_byte(path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    "model_bitflip": ("model.safetensors", _flip_byte, "corrupt"),
    "model_truncated": ("model.safetensors", _truncate, "truncated"),
    "optim_bitflip": ("optimizer.safetensors", lambda p: _flip_byte(p, 0.9), "corrupt"),
    "optim_truncated": ("optimizer.safetensors", _truncate, "truncated"),
    "optim_padded": ("optimizer.safetensors", lambda p: p.write_bytes(p.read_bytes() + b"\0"), "longer"),
    "rank_edited": ("rank_00000.json", lambda p: p.write_text(p.read_text().replace('"pos"', '"pos" ')), "bytes"),
    "state_truncated": ("state.json", _truncate, "not valid JSON"),
    "state_edited": ("state.json", lambda p: p.write_text(p.read_text().replace('"step": 4', '"step": 5')), "digest"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_checksums_detect_damage_and_latest_falls_back(tmp_path, damage):
    fname, hurt, needle = DAMAGES[damage]
    tr = _quick_trainer(tmp_path)
    tr.fit(until=4)  # checkpoints at steps 2 and 4
    root = tmp_path / "checkpoints"
    bad = root / "step_00000004"
    state = json.loads((bad / "state.json").read_text())
    assert state["format"] == ckpt_mod.FORMAT
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors", "rank_00000.json"}
    assert state["files"]["model.safetensors"]["sha256"] == hashlib.sha256(
        (bad / "model.safetensors").read_bytes()).hexdigest()
    verify_checkpoint(bad)  # intact: passes
    hurt(bad / fname)
    with pytest.raises(CheckpointError, match=needle) as exc:
        verify_checkpoint(bad)
    assert fname in str(exc.value)
    with pytest.raises(CheckpointError, match=fname):
        _quick_trainer(tmp_path).load_checkpoint(bad)  # named directly: no fallback
    if fname == "model.safetensors":
        with pytest.raises(CheckpointError, match=fname):
            load_weights(TinyCharMLP(), bad)
    # "latest" (pointer, root, out_dir, resume) passes over the damaged one, says so, and uses step 2
    with pytest.warns(UserWarning, match=r"passed over: step_00000004: .*" + needle):
        assert latest_checkpoint(root).name == "step_00000002"
    fresh = _quick_trainer(tmp_path)
    with pytest.warns(UserWarning, match="step_00000004"):
        assert fresh.resume() is True
    assert fresh.step == 2
    with pytest.warns(UserWarning, match="step_00000004"):
        assert resolve_checkpoint(tmp_path).name == "step_00000002"


def test_pointer_to_missing_checkpoint_falls_back_and_newer_dirs_are_ignored(tmp_path):
    tr = _quick_trainer(tmp_path)
    tr.fit(until=6)
    root = tmp_path / "checkpoints"
    (root / "latest").write_text("step_00000004\n")  # a kill between the rename of step 6 and the pointer update
    assert latest_checkpoint(root).name == "step_00000004"  # the pointer's target wins over a newer dir
    (root / "latest").write_text("step_00000099\n")
    with pytest.warns(UserWarning, match="step_00000099"):
        assert latest_checkpoint(root).name == "step_00000006"
    (root / "latest").write_bytes(b"\xff\xfe")
    with pytest.warns(UserWarning, match="not a complete checkpoint"):
        assert latest_checkpoint(root).name == "step_00000006"
    (root / "latest").unlink()  # a kill before the very first pointer write: the newest complete one
    assert latest_checkpoint(root).name == "step_00000006"
    assert latest_checkpoint(tmp_path / "nothing_here") is None


def test_format_1_checkpoint_without_checksums_still_loads(tmp_path):
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)
    ck = tmp_path / "checkpoints" / "step_00000002"
    state = json.loads((ck / "state.json").read_text())
    for k in ("files", "state_sha256"):
        del state[k]
    state["format"] = ckpt_mod.FORMAT_V1
    (ck / "state.json").write_text(json.dumps(state))
    fresh = _quick_trainer(tmp_path)
    with pytest.warns(UserWarning, match="predates checksums"):
        assert fresh.load_checkpoint(ck) == 2
    _assert_bit_identical(fresh.model, tr.model)


def test_keep_last_deletes_without_leaving_partial_checkpoints(tmp_path, monkeypatch):
    """A kill while an old checkpoint is deleted leaves a .del-* dir, never a step_* with missing files."""
    tr = _quick_trainer(tmp_path, keep_last=1)
    tr.fit(until=2)
    root = tmp_path / "checkpoints"
    real_rmtree = ckpt_mod.shutil.rmtree

    def killed_rmtree(path, *a, **k):
        if Path(path).name.startswith(".del-"):
            (Path(path) / "model.safetensors").unlink()  # got this far, then the "kill"
            raise KeyboardInterrupt("killed mid-delete")
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(until=4)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(root)] == ["step_00000004"]
    assert (root / ".del-step_00000002").is_dir()
    assert latest_checkpoint(root).name == "step_00000004"
    tr.fit(until=6)  # the next save clears the debris
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006"]


def test_loading_never_unpickles(tmp_path, monkeypatch):
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)
    ck = tmp_path / "checkpoints" / "step_00000002"
    assert sorted(p.suffix for p in ck.iterdir()) == [".json", ".json", ".safetensors", ".safetensors"]

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    fresh = _quick_trainer(tmp_path)
    assert fresh.load_checkpoint(ck) == 2
    m = TinyCharMLP()
    load_weights(m, tmp_path)
    _assert_bit_identical(m, tr.model)


def test_load_weights_refuses_a_checkpoint_that_lacks_model_tensors(tmp_path):
    """A model with a parameter the checkpoint does not hold must not load silently with that parameter at its
    initial value (torch's set_model_state_dict(strict=True) does not report missing keys)."""
    tr = _quick_trainer(tmp_path)
    tr.fit(until=2)

    class Extra(TinyCharMLP):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Parameter(torch.zeros(3))

    m = Extra()
    with pytest.raises(ValueError, match=r"lacks 1 of the model's tensors.*'extra'"):
        load_weights(m, tmp_path)
    load_weights(m, tmp_path, strict=False)  # asked for: loads what exists, keeps the rest
    assert torch.equal(m.extra, torch.zeros(3))
    assert torch.equal(m.embed.weight, tr.model.embed.weight)


def test_tied_weights_roundtrip(tmp_path):
    class Tied(TinyCharMLP):
        def __init__(self):
            super().__init__(dim=8, window=1, hidden=8)
            self.head = torch.nn.Linear(8, 16, bias=False)
            self.head.weight = self.embed.weight  # aliased tensors: safetensors needs private copies

        def forward(self, x):
            return self.head(self.embed(x[:, 0]))

    torch.manual_seed(0)
    tr = Trainer(Tied(), toy_loss, toy_batch_at, _cfg(tmp_path, steps=2, ckpt_every=1, grad_accum=1))
    tr.fit()
    m = Tied()
    load_weights(m, tmp_path)
    assert m.head.weight is m.embed.weight
    assert torch.equal(m.embed.weight, tr.model.embed.weight)


def test_rng_state_roundtrip_is_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random()
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    state = json.loads(json.dumps(capture_rng_state()))
    want = (random.random(), np.random.randn(), torch.rand(3))
    _scramble_process_state()
    restore_rng_state(state)
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])
    with pytest.raises(ValueError, match="rng state"):
        restore_rng_state({"python": {}})
