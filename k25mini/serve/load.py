"""Concurrent clients against a chat-completions endpoint: latency percentiles, throughput, and a check that
every request was answered exactly once (used by benchmarks/serve_load.py and tests/serve).

    stats = asyncio.run(run_load("http://127.0.0.1:8000/v1", "k25mini-nano", clients=16, requests_per_client=4))
    stats["p50_s"], stats["p99_s"], stats["tokens_per_s"], stats["answered_once"]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

__all__ = ["run_load"]


async def run_load(base_url: str, model: str, clients: int, requests_per_client: int = 1, *, max_tokens: int = 16,
                   temperature: float = 1.0, timeout_s: float = 600.0) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending ``requests_per_client`` requests one after another. Each
    request carries a unique tag in its prompt (``client c request r``); ``answered_once`` is True when every tag
    got exactly one 200 answer with a distinct completion id. Latency is client-side wall time per request."""
    import httpx

    for name, v in (("clients", clients), ("requests_per_client", requests_per_client), ("max_tokens", max_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    url = base_url.rstrip("/") + "/chat/completions"
    lat: list[float] = []
    answers: dict[str, list[str]] = {}
    statuses: dict[int, int] = {}
    tokens = 0

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for r in range(requests_per_client):
            tag = f"client {c} request {r}"
            body = {"model": model, "messages": [{"role": "user", "content": f"{tag}: say something"}],
                    "max_tokens": max_tokens, "temperature": temperature}
            t0 = time.perf_counter()
            resp = await http.post(url, json=body)
            lat.append(time.perf_counter() - t0)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                data = resp.json()
                answers.setdefault(tag, []).append(data["id"])
                tokens += int(data["usage"]["completion_tokens"])

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    n = clients * requests_per_client
    ids = [i for v in answers.values() for i in v]
    once = len(answers) == n and all(len(v) == 1 for v in answers.values()) and len(set(ids)) == n
    arr = np.array(lat)
    return {"clients": clients, "requests": n, "statuses": statuses, "answered_once": once, "wall_s": wall,
            "p50_s": float(np.percentile(arr, 50)), "p99_s": float(np.percentile(arr, 99)),
            "completion_tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": n / wall}
