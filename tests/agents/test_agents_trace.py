"""JSONL traces round-trip; the timeline figure draws one row per agent."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

from k25mini.agents import (
    Action,
    FakeWeb,
    FanOutOrchestrator,
    LookupAgent,
    ScriptedPolicy,
    SwarmConfig,
    SwarmRuntime,
    ToolCall,
    load_episodes,
    plot_timeline,
    save_episodes,
)

matplotlib.use("Agg")

PAGES = {f"p{i}": f"item{i}\nvalue{i}" for i in range(4)}
TASK = "Values for: item0, item1, item2, item3"


def swarm_episode(eid="e1"):
    class Failing(LookupAgent):
        async def act(self, view):
            if "item3" in view.task:
                raise RuntimeError("boom")
            return await super().act(view)

    rt = SwarmRuntime(FakeWeb(PAGES), FanOutOrchestrator(chunk_size=1), Failing(), SwarmConfig(record_contexts=True))
    return rt.run_sync(TASK, episode_id=eid)


def test_jsonl_round_trip(tmp_path):
    ep = swarm_episode()
    path = save_episodes(tmp_path / "traces" / "ep.jsonl", ep)
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert lines[0]["type"] == "episode" and lines[0]["summary"]["critical_steps"] == ep.critical_steps
    assert {l["type"] for l in lines} == {"episode", "agent", "stage", "step"}
    (back,) = load_episodes(path)
    assert back.summary() == ep.summary()
    assert [s.subs for s in back.stages] == [s.subs for s in ep.stages]
    assert [(s.agent_id, s.step, s.in_loss, s.kind) for s in back.steps] == [
        (s.agent_id, s.step, s.in_loss, s.kind) for s in ep.steps]
    assert back.steps[0].context[1]["content"] == TASK  # recorded contexts survive
    assert back.agents["worker#4"].status == "error"


def test_append_several_episodes_and_non_json_info(tmp_path):
    path = tmp_path / "eps.jsonl"
    pol = ScriptedPolicy(lambda v: Action(calls=[ToolCall("finish", {"answer": "a"})],
                                          info={"logp": torch.zeros(3), "ids": [1, 2]}))
    one = SwarmRuntime(FakeWeb(PAGES), pol, LookupAgent()).run_sync(TASK, episode_id="one")
    save_episodes(path, one)
    save_episodes(path, [swarm_episode("two"), swarm_episode("three")], append=True)
    eps = load_episodes(path)
    assert [e.episode_id for e in eps] == ["one", "two", "three"]
    assert eps[0].steps[0].info == {"ids": [1, 2], "_dropped": ["logp"]}


def test_load_rejects_orphan_records(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"type": "step", "episode_id": "x"}) + "\n")
    with pytest.raises(ValueError, match="before its episode header"):
        load_episodes(p)


def test_timeline_figure():
    from matplotlib.figure import Figure

    ep = swarm_episode()
    fig = plot_timeline(ep)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "main" and len(labels) == 1 + ep.n_assigned
    assert "[error]" in labels[-1]
    assert len(ax.patches) >= len(ep.steps)
    assert f"critical steps {ep.critical_steps}" in ax.get_title()
    matplotlib.pyplot.close(fig)
