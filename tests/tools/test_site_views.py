"""Root mode binds the interpreter's site-packages read-only into the sandbox, so a virtualenv inside a directory
the sandbox uid cannot traverse (a checkout in a mode-700 ``mktemp -d``, as CI makes) still imports."""

from __future__ import annotations

import os

import numpy as np
import pytest

import k25mini.tools.sandbox as sb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root mode only (the views are made before the uid drop)")


def test_site_packages_behind_a_mode_700_dir_are_importable(tmp_path, monkeypatch, strong_mode):
    real = next(p for p in sb._pythonpath().split(os.pathsep) if os.path.isdir(os.path.join(p, "numpy")))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    (locked / "site-packages").symlink_to(real)
    monkeypatch.setattr(sb, "_pythonpath", lambda: str(locked / "site-packages"))
    try:
        caps = sb.sandbox_capabilities(refresh=True)
        assert caps.best == "root", caps.problems
        with sb.CodeTool() as t:
            t.start(image=np.zeros((16, 16, 3), np.uint8))
            obs = t.run("import numpy, sys\nprint(numpy.__file__)\nprint(sys.path)\n"
                        "import os\nprint(os.access(numpy.__file__, os.W_OK))")
        assert obs.status == "ok", obs
        assert "/tmp/.k25mini-site/0/numpy/__init__.py" in obs.text
        assert str(locked) not in obs.text.split("\n")[0]
        assert obs.text.strip().endswith("False")  # the view is read-only
    finally:
        monkeypatch.undo()
        sb.sandbox_capabilities(refresh=True)
