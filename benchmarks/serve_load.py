"""Load on ``k25mini serve``: 1, 4, 16 and 64 concurrent clients; p50 / p99 latency, tokens/s, and whether every
request was answered exactly once.

    python benchmarks/serve_load.py                      # serves a random printable nano checkpoint itself
    python benchmarks/serve_load.py --checkpoint DIR     # serves DIR (python -m k25mini.serve in a subprocess)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/v1 --model NAME   # any running server

The server runs as its own process (``python -m k25mini.serve``, one torch thread), so the clients do not share
its interpreter. Each client sends its requests one after another; a level's requests all carry distinct tags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from k25mini.serve.load import run_load

ROOT = Path(__file__).resolve().parents[1]
PER_CLIENT = {1: 16, 4: 8, 16: 4, 64: 2}  # requests per client at each level


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_checkpoint(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from k25mini.interop import save_pretrained
    from tests.rl.printable import printable_model  # a random nano VLM whose samples are printable text

    return save_pretrained(printable_model(), folder / "nano-smoke")


def _start(checkpoint: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "k25mini.serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--model-name", args.model, "--threads", str(args.threads), "--max-batch", str(args.max_batch),
           "--max-queue", "256"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}") from None
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the server did not start within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="benchmark this running server instead of starting one")
    ap.add_argument("--model", default="k25mini-nano-smoke")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            ckpt = Path(args.checkpoint) if args.checkpoint else _smoke_checkpoint(Path(tmp))
            port = _free_port()
            proc = _start(ckpt, port, args)
            url = f"http://127.0.0.1:{port}/v1"
        try:
            asyncio.run(run_load(url, args.model, 2, 1, max_tokens=4))  # warm-up
            rows = []
            print(f"{'clients':>7} {'requests':>8} {'p50 s':>7} {'p99 s':>7} {'tokens/s':>9} {'req/s':>6} "
                  f"{'answered once':>13}  statuses", flush=True)
            for c in levels:
                s = asyncio.run(run_load(url, args.model, c, PER_CLIENT.get(c, 2), max_tokens=args.max_tokens))
                rows.append(s)
                print(f"{c:7d} {s['requests']:8d} {s['p50_s']:7.3f} {s['p99_s']:7.3f} {s['tokens_per_s']:9.1f} "
                      f"{s['requests_per_s']:6.2f} {str(s['answered_once']):>13}  {s['statuses']}", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
