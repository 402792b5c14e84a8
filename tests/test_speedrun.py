import json

import pytest

from k25mini import speedrun


def test_stage_configs_reports_every_preset():
    lines = speedrun.stage_configs()
    assert {"nano", "small", "k2", "k25"} <= set(lines)
    assert "1026.4082 B" in lines["k2"]


def test_missing_stage_module_is_skipped_and_failures_stop(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speedrun, "ROOT", tmp_path)
    monkeypatch.setattr(speedrun, "STAGES", [
        ("configs", "k25mini.speedrun:stage_configs"),
        ("future", "k25mini.not_built_yet:stage"),
    ])
    assert speedrun.main() == 0
    out = capsys.readouterr().out
    assert "[skip] future: not built yet" in out
    report = json.loads((tmp_path / "results" / "speedrun_smoke.json").read_text())
    assert report["stages"]["configs"]["status"] == "ok"

    def boom():
        raise RuntimeError("bad stage")

    monkeypatch.setattr(speedrun, "stage_boom", boom, raising=False)
    monkeypatch.setattr(speedrun, "STAGES", [("boom", "k25mini.speedrun:stage_boom")])
    assert speedrun.main() == 1
    report = json.loads((tmp_path / "results" / "speedrun_smoke.json").read_text())
    assert report["stages"]["boom"]["status"] == "failed"


def test_broken_import_inside_a_stage_module_is_not_hidden(monkeypatch, tmp_path):
    # a stage module that exists but imports something missing must fail loudly, not read as "not built yet"
    (tmp_path / "k25_probe_stage.py").write_text("import k25_dependency_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="k25_dependency_that_does_not_exist"):
        speedrun._resolve("k25_probe_stage:stage")
    assert speedrun._resolve("k25_probe_stage_absent:stage") is None
