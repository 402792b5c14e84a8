"""The code tool's functional contract: stateful calls, preloaded image/frames and helpers, images handed back,
argument checks, episodes that start fresh, the warm pool, and labelling of the weak mode."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from k25mini.tools import CodeTool, KernelPool, SandboxCapabilities, SandboxLimits, SandboxUnavailable
from k25mini.tools import sandbox as sb


def test_state_image_and_helpers(tool, scene):
    assert tool.run("x = 41").ok
    obs = tool.run("x + 1")
    assert obs.status == "ok" and obs.text == "42" and not obs.restarted
    assert obs.sandbox == tool.label and "WEAK" not in obs.sandbox
    assert tool.run("image.shape, image.dtype.name").text == "((48, 48, 3), 'uint8')"
    assert tool.run("bar_heights(color_mask(image, (30, 30, 200), tol=5))").text == "[14, 8]"
    assert tool.run("count_components(threshold(image))").text == "3"
    obs = tool.run("show(crop(image, 4, 4, 12, 12)); print('done')")
    assert obs.ok and len(obs.images) == 1 and "done" in obs.text
    assert obs.images[0].shape == (8, 8, 3) and (obs.images[0] == (200, 30, 30)).all()


def test_errors_come_back_as_observations(tool):
    assert tool.run("keep = 42").ok
    obs = tool.run("1 / 0")
    assert obs.status == "error" and "ZeroDivisionError" in obs.text and "\x1b[" not in obs.text
    assert tool.run("keep").text == "42"  # the kernel is still the same one
    obs = tool.run("def f(:\n  pass")
    assert obs.status == "error" and "SyntaxError" in obs.text


def test_too_many_or_bad_images_are_refused(tool):
    obs = tool.run("for _ in range(6): show(image)")
    assert obs.ok and len(obs.images) == tool.limits.max_images and "images per call" in obs.text
    obs = tool.run("show(image.astype(float))")
    assert obs.status == "error" and "uint8" in obs.text


def test_argument_checks(scene, strong_mode):
    with pytest.raises(ValueError, match="timeout must be a positive"):
        CodeTool(timeout=-1)
    with pytest.raises(ValueError, match="SandboxLimits.memory_bytes must be a positive int"):
        SandboxLimits(memory_bytes=0)
    with pytest.raises(ValueError, match="mode must be"):
        CodeTool(mode="none")
    t = CodeTool()
    with pytest.raises(TypeError, match="image must be a numpy array, got list"):
        t.start(image=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="image must have 2 or 3 dimensions"):
        t.start(image=np.zeros(5))
    with pytest.raises(ValueError, match="frames must have 3 or 4 dimensions"):
        t.start(frames=np.zeros((4, 4)))
    with pytest.raises(RuntimeError, match="before start"):
        t.run("1")
    with pytest.raises(TypeError, match="code must be a str"):
        CodeTool.run(t, b"1")
    assert not t.started


@pytest.mark.slow
def test_episodes_are_fresh_and_frames_load(scene, strong_mode):
    t = CodeTool(timeout=5)
    frames = [scene, 255 - scene]
    t.start(frames=frames)
    first = (t.workdir, t.label, t.kernel_pid)
    assert t.run("frames.shape").text == "(2, 48, 48, 3)"
    assert t.run("secret = 7; open('note.txt', 'w').write('x'); 'image' in globals()").text == "False"
    t.start(image=scene)  # a new episode
    assert not os.path.exists(first[0])
    assert t.workdir != first[0] and t.kernel_pid != first[2]
    obs = t.run("import os; print('secret' in globals(), 'frames' in globals(), os.path.exists('note.txt'))")
    assert obs.text == "False False False"
    if strong_mode == "root":
        assert t.label != first[1]  # a fresh uid per kernel
    t.close()
    assert not t.started


def test_setup_code_runs_every_episode_and_after_restarts(scene, strong_mode):
    from k25mini.tools.sandbox import SandboxError

    t = CodeTool(timeout=2)
    t.start(image=scene, setup="MAGIC = 41 + 1\nprint('hidden')")
    try:
        assert t.run("print(MAGIC, image.shape)").text.strip() == "42 (48, 48, 3)"
        obs = t.run("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass")
        assert obs.status == "timeout" and obs.restarted
        assert t.run("print(MAGIC)").text.strip() == "42"  # the setup ran again in the new kernel
        t.start()  # a new episode without setup: nothing carries over
        assert t.run("print('MAGIC' in globals())").text.strip() == "False"
        with pytest.raises(ValueError, match="setup must be a string"):
            t.start(setup=42)
        with pytest.raises(SandboxError, match="setup code failed"):
            t.start(setup="raise RuntimeError('boom')")
    finally:
        t.close()


@pytest.mark.slow
def test_warm_pool(scene, strong_mode):
    with KernelPool(size=1, limits=SandboxLimits(timeout_s=5.0)) as pool:
        pool.wait_ready(timeout=60)
        t = CodeTool(pool=pool).start(image=scene)
        assert t.start_s < 0.5, f"start from a ready pool took {t.start_s:.2f} s"
        assert t.run(f"int(image.sum()) == {int(scene.sum())}").text == "True"
        with pytest.raises(ValueError, match="come from the pool"):
            CodeTool(pool=pool, limits=SandboxLimits())
        t.close()


# --------------------------------------------------------------------------- never unsandboxed without a label


@pytest.fixture
def no_isolation(monkeypatch):
    caps = SandboxCapabilities(modes={"weak": sys.executable}, problems={"root": "forced off", "userns": "forced off"})
    monkeypatch.setattr(sb, "sandbox_capabilities", lambda refresh=False: caps)
    return caps


def test_default_mode_refuses_without_isolation(no_isolation):
    with pytest.raises(SandboxUnavailable, match="Refusing to run model code unsandboxed.*mode='weak'"):
        CodeTool()
    with pytest.raises(SandboxUnavailable, match="Refusing"):
        KernelPool()
    with pytest.raises(SandboxUnavailable, match="'userns' is unavailable"):
        CodeTool(mode="userns")


@pytest.mark.slow
def test_weak_mode_labels_every_observation(no_isolation, scene):
    with CodeTool(mode="weak", timeout=2).start(image=scene) as t:
        assert t.label == sb.WEAK_LABEL and "NO network isolation" in t.label
        for code in ("1 + 1", "1 / 0", "print('x' * 20000)", "import time; time.sleep(10)"):
            obs = t.run(code)
            assert obs.sandbox == sb.WEAK_LABEL, code
            assert obs.text.startswith(f"[{sb.WEAK_LABEL}]"), code
            assert obs.to_dict()["sandbox"] == sb.WEAK_LABEL
        assert obs.status == "timeout"
        assert "HOME" in t.run("import os; sorted(os.environ)").text  # scrubbed env still applies
        assert t.run(f"import os; os.getcwd() == {t.workdir!r}").text.endswith("True")


def test_every_mode_but_weak_is_labelled_isolated():
    assert "WEAK" in sb._label("weak", None)
    for mode in ("root", "userns"):
        assert "netns" in sb._label(mode, 123) and "WEAK" not in sb._label(mode, 123)
    assert set(sb.MODES) == {"root", "userns", "weak"}
