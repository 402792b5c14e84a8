"""tools/test_browser.py (``make test-browser``) skips cleanly, exit 0, where no Chromium can be found."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skips_without_chromium(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CHROMIUM"}
    env["PATH"] = str(tmp_path)  # an empty directory: no chromium, chrome or chromium-browser on PATH
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "test_browser.py")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "test-browser: SKIPPED" in out.stdout
