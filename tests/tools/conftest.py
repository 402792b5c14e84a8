"""Shared fixtures for the code-tool tests: one strict-mode kernel reused by the attacks that leave it usable."""

from __future__ import annotations

import os

import numpy as np
import pytest

from k25mini.tools import CodeTool, SandboxLimits, sandbox_capabilities


def strong_mode_or_skip() -> str:
    """The strongest isolation mode here; skips on a machine without namespaces, unless K25_REQUIRE_SANDBOX=1
    (set by .ci/run: CI must run the attack tests, not skip them)."""
    caps = sandbox_capabilities()
    if caps.best is None:  # a machine without namespaces: the attack tests need real isolation
        msg = f"no namespace isolation on this machine: {caps.problems}"
        if os.environ.get("K25_REQUIRE_SANDBOX") == "1":
            pytest.fail(msg + " (K25_REQUIRE_SANDBOX=1)")
        pytest.skip(msg)
    return caps.best


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    img = np.full((48, 48, 3), 255, np.uint8)
    img[4:12, 4:12] = (200, 30, 30)
    img[30:44, 10:14] = (30, 30, 200)
    img[36:44, 20:24] = (30, 30, 200)
    return img


@pytest.fixture(scope="session")
def strong_mode() -> str:
    return strong_mode_or_skip()


@pytest.fixture(scope="module")
def tool(scene, strong_mode):
    t = CodeTool(limits=SandboxLimits(timeout_s=2.0, grace_s=1.0)).start(image=scene)
    yield t
    t.close()
