"""Code-tool latency (chapter 06, issue #16): per-call latency for short code and kernel start time, cold and
from a warm pool. Prints a table; the numbers go into docs/benchmarks.md (no timed assertions in tests).

    .venv/bin/python benchmarks/bench_code_tool.py [--calls 200] [--starts 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from k25mini.tools import CodeTool, KernelPool, SandboxLimits, sandbox_capabilities

SHORT = ["1 + 1", "x = 3", "x * 2", "image.shape", "print('hi')", "int(image[..., 0].mean())"]


def _row(name: str, xs: list[float]) -> str:
    ms = [1000 * x for x in xs]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--starts", type=int, default=5)
    args = ap.parse_args()
    t = time.perf_counter()
    caps = sandbox_capabilities()
    probe_s = time.perf_counter() - t
    print(f"mode {caps.best} (interpreter {caps.modes.get(caps.best)}); capability probe {probe_s:.2f} s (once)")
    img = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    limits = SandboxLimits(timeout_s=10.0)

    cold = []
    for _ in range(args.starts):
        tool = CodeTool(limits=limits)
        t = time.perf_counter()
        tool.start(image=img)
        cold.append(time.perf_counter() - t)
        tool.close()

    tool = CodeTool(limits=limits).start(image=img)
    calls, helper = [], []
    for i in range(args.calls):
        obs = tool.run(SHORT[i % len(SHORT)])
        assert obs.ok, obs.text
        calls.append(obs.elapsed_s)
    for _ in range(20):
        obs = tool.run("count_components(threshold(image))")
        assert obs.ok, obs.text
        helper.append(obs.elapsed_s)
    label = tool.label
    tool.close()

    warm = []
    with KernelPool(size=1, limits=limits) as pool:
        for _ in range(args.starts):
            pool.wait_ready(timeout=60)
            tool = CodeTool(pool=pool)
            t = time.perf_counter()
            tool.start(image=img)
            warm.append(time.perf_counter() - t)
            assert tool.run("image.shape").text == "(48, 48, 3)"
            tool.close()

    print(f"sandbox: {label}\n")
    print("| measurement | n | median ms | min ms | max ms |\n|---|---|---|---|---|")
    print(_row("tool call, short code (" + ", ".join(f"`{c}`" for c in SHORT[:3]) + ", ...)", calls))
    print(_row("tool call, `count_components(threshold(image))` on 48x48", helper))
    print(_row("episode start, cold (new kernel + image + helpers)", cold))
    print(_row("episode start, from a ready warm pool", warm))


if __name__ == "__main__":
    main()
