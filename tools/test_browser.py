"""Run every chapter notebook as a student does: JupyterLab in a headless browser (``make test-browser``).

    python tools/test_browser.py [notebooks/01_navit_packing.ipynb ...]   # default: every chapter + solution

For each notebook: open it in JupyterLab in headless Chromium, "Restart Kernel and Run All Cells" at
``K25_SCALE=smoke``, and wait. A notebook passes when

* every non-empty code cell has an execution count and the kernel is idle at the end (no cell left busy),
* no cell has an error output,
* a notebook that uses ipywidgets shows them as live widgets (``.jupyter-widgets`` views in the page,
  not their text fallback, not "Error displaying widget"),
* every image embedded in markdown (the diagrams under notebooks/figures/) loads.

Screenshots go to ``build/browser/<notebook>.png`` (build/ is gitignored). The notebooks on disk are
never modified: autosave is switched off in a throwaway JupyterLab settings directory.

Needs Python ``playwright`` (``pip install playwright`` or ``pip install -e ".[browser]"``) and a
Chromium binary (``apt-get install chromium``; or set ``CHROMIUM=/path/to/chrome``). Playwright's own
browser download is not used. Without either, the script prints why and exits 0 (a skip).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "browser"

# JavaScript run in the page: the state of the notebook that is open (window.jupyterapp is exposed
# with --LabApp.expose_app_in_browser).
STATE_JS = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = [];
  const model = panel.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') continue;
    const outs = c.outputs.toJSON();
    const errors = outs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue);
    cells.push({index: i, empty: c.sharedModel.getSource().trim() === '', count: c.executionCount,
                errors: errors});
  }
  const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))
                       .map(e => e.textContent.trim());
  return {kernel: kernel ? kernel.status : 'none', cells: cells,
          busy_prompts: prompts.filter(t => t.includes('*')).length};
}"""

WIDGET_JS = """() => ({
  views: document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
  broken: Array.from(document.querySelectorAll('.jp-OutputArea-output'))
               .filter(e => e.textContent.includes('Error displaying widget')
                            || e.textContent.includes('Error rendering widget')).length,
  fallback: Array.from(document.querySelectorAll('.jp-OutputArea-output'))
                 .filter(e => /^\\s*(interactive|IntSlider|VBox|HBox)\\(children=/.test(e.textContent)).length,
})"""


# markdown images (notebooks/figures/*.png) that did not load
BROKEN_IMAGES_JS = """() => Array.from(document.querySelectorAll('.jp-MarkdownOutput img'))
  .filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src'))"""


def find_chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if cand and (shutil.which(cand) or Path(cand).is_file()):
            return shutil.which(cand) or cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uses_widgets(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf-8"))
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return "ipywidgets" in src


def write_lab_settings(settings: Path) -> None:
    """No autosave (the notebooks on disk stay as committed), no cell windowing (every output in the DOM)."""
    files = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for rel, value in files.items():
        p = settings / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value), encoding="utf-8")


def start_lab(port: int, token: str, tmp: Path, env: dict) -> subprocess.Popen:
    settings, workspaces = tmp / "settings", tmp / "workspaces"
    write_lab_settings(settings)
    workspaces.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={ROOT}", f"--IdentityProvider.token={token}",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers often run as root
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early; see {tmp / 'jupyterlab.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("jupyter lab did not start within 120 s")


def run_notebook(page, base: str, token: str, nb: Path, timeout: float) -> dict:
    rel = nb.resolve().relative_to(ROOT).as_posix()
    t0 = time.time()
    page.goto(f"{base}/lab/tree/{rel}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                           " === 'idle'", timeout=120_000)
    # Restart Kernel and Run All: the menu command asks for confirmation in a dialog
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-run-all'); }")
    page.locator(".jp-Dialog .jp-mod-accept").click(timeout=30_000)
    t_run = time.time()
    state, ok_since = None, None
    while time.time() - t_run < timeout:
        time.sleep(1.0)
        state = page.evaluate(STATE_JS)
        if state is None:
            continue
        if any(c["errors"] for c in state["cells"]):
            break
        done = all(c["count"] is not None for c in state["cells"] if not c["empty"])
        if done and state["kernel"] == "idle" and state["busy_prompts"] == 0:
            if ok_since is None:
                ok_since = time.time()
            elif time.time() - ok_since > 2.0:  # idle twice in a row: nothing queued behind
                break
        else:
            ok_since = None
    elapsed = time.time() - t_run
    widgets = page.evaluate(WIDGET_JS)
    broken_images = page.evaluate(BROKEN_IMAGES_JS)
    shot = OUT / (nb.stem + ("_solution" if nb.parent.name == "solutions" else "") + ".png")
    page.screenshot(path=str(shot))
    first = page.locator(".jp-OutputArea-output .jupyter-widgets").first
    if widgets["views"]:
        first.scroll_into_view_if_needed()
        page.screenshot(path=str(shot.with_name(shot.stem + "_widget.png")))
    problems = []
    if state is None:
        problems.append("notebook never opened")
    else:
        code = [c for c in state["cells"] if not c["empty"]]
        missing = [c["index"] for c in code if c["count"] is None]
        errors = [f"cell {c['index']}: {e}" for c in code for e in c["errors"]]
        problems += errors
        if missing:
            problems.append(f"{len(missing)} of {len(code)} code cells not executed (first: cell {missing[0]})")
        if state["kernel"] != "idle":
            problems.append(f"kernel {state['kernel']} at the end")
        if state["busy_prompts"]:
            problems.append(f"{state['busy_prompts']} cells still busy")
    if broken_images:
        problems.append(f"markdown images not found: {broken_images}")
    if uses_widgets(nb):
        if widgets["views"] == 0:
            problems.append("imports ipywidgets but no widget view rendered")
        if widgets["broken"] or widgets["fallback"]:
            problems.append(f"widgets not rendered: {widgets['broken']} errors, {widgets['fallback']} text fallbacks")
    return {"notebook": rel, "ok": not problems, "problems": problems, "run_s": round(elapsed, 1),
            "total_s": round(time.time() - t0, 1), "widget_views": widgets["views"], "screenshot": str(shot)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per notebook (default 900)")
    ap.add_argument("--scale", default="smoke", help="K25_SCALE for the kernels (default smoke)")
    args = ap.parse_args()

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("test-browser: SKIPPED - Python playwright is not installed (pip install playwright)")
        return 0
    chromium = find_chromium()
    if chromium is None:
        print("test-browser: SKIPPED - no Chromium found (apt-get install chromium, or set CHROMIUM=...)")
        return 0

    paths = args.notebooks or sorted(glob.glob(str(ROOT / "notebooks/[0-9]*.ipynb"))) + sorted(
        glob.glob(str(ROOT / "notebooks/solutions/*.ipynb")))
    notebooks = [Path(p).resolve() for p in paths]
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, K25_SCALE=args.scale,
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as in a student's JupyterLab
    port, token = free_port(), secrets.token_hex(16)
    results = []
    with tempfile.TemporaryDirectory(prefix="k25-browser-") as tmpd:
        tmp = Path(tmpd)
        try:
            lab = start_lab(port, token, tmp, env)
        except RuntimeError:
            shutil.copy(tmp / "jupyterlab.log", OUT / "jupyterlab.log")
            print(f"test-browser: FAILED to start JupyterLab (log: {OUT / 'jupyterlab.log'})")
            raise
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
                for nb in notebooks:
                    page = browser.new_page(viewport={"width": 1400, "height": 1800})
                    try:
                        r = run_notebook(page, f"http://127.0.0.1:{port}", token, nb, args.timeout)
                    except Exception as err:  # a browser/lab failure is a failed notebook, not a crash
                        r = {"notebook": str(nb.relative_to(ROOT)), "ok": False,
                             "problems": [f"{type(err).__name__}: {str(err).splitlines()[0]}"],
                             "run_s": None, "total_s": None, "widget_views": 0, "screenshot": None}
                    finally:
                        # shut the kernel down so the next notebook has the CPU to itself
                        try:
                            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
                        except Exception:
                            pass
                        page.close()
                    results.append(r)
                    status = "PASS" if r["ok"] else "FAIL"
                    print(f"{status} {r['notebook']:48s} run {r['run_s']} s, widgets {r['widget_views']}"
                          + ("" if r["ok"] else "  <- " + "; ".join(r["problems"])), flush=True)
                browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
            shutil.copy(tmp / "jupyterlab.log", OUT / "jupyterlab.log")
    (OUT / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    n_ok = sum(r["ok"] for r in results)
    print(f"test-browser: {n_ok}/{len(results)} notebooks passed (screenshots and results.json in {OUT})")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
