"""64 concurrent clients against the smoke checkpoint: every request answered exactly once, in batches."""

from __future__ import annotations

import asyncio

from k25mini.serve.load import run_load
from tests.serve.conftest import MODEL


def test_64_concurrent_clients_each_answered_once(model_server):
    app = model_server.app
    jobs_before = sum(app.state.batcher.batches)
    answered_before = app.state.counts["answered"]
    stats = asyncio.run(run_load(model_server.url, MODEL, clients=64, requests_per_client=1, max_tokens=6))
    assert stats["statuses"] == {200: 64}
    assert stats["answered_once"]
    assert app.state.counts["answered"] - answered_before == 64
    assert sum(app.state.batcher.batches) - jobs_before == 64  # each request generated exactly once
    assert max(app.state.batcher.batches) > 1  # ...and they were batched
