"""Results I/O: atomic writes, the schema stamp, the code version and the stale flag."""

import json
import platform

import numpy as np
import pytest

from k25mini.experiments import results as R

PKG = "k25mini.experiments.ch05_fusion"


def test_write_result_stamps_schema_and_provenance(tmp_path):
    out = R.write_result(tmp_path / "a" / "x.json", {"metric": 1.5, "schema": 99}, experiment="x", package=PKG,
                         wall_s=3.14159)
    disk = json.loads((tmp_path / "a" / "x.json").read_text())
    assert disk == out and disk["metric"] == 1.5 and disk["schema"] == R.SCHEMA_VERSION == 2
    p = disk["provenance"]
    assert p["source_hash"] == R.source_hash(PKG) and len(p["source_hash"]) == 12
    assert p["wall_s"] == 3.14 and p["threads"] >= 1 and p["torch"]
    assert p["numpy"] == np.__version__ and p["python"] == platform.python_version()  # the environment too
    assert not list((tmp_path / "a").glob(".*tmp"))  # no temporary left behind
    assert R.staleness(disk, PKG) is None
    with pytest.raises(ValueError, match="payload"):
        R.write_result(tmp_path / "y.json", [1, 2], experiment="x", package=PKG)


def test_stale_code_version_is_flagged(tmp_path):
    cur = R.write_result(tmp_path / "r.json", {"v": 1}, experiment="x", package=PKG)
    old = json.loads(json.dumps(cur))
    old["provenance"]["source_hash"] = "0123456789ab"
    msg = R.staleness(old, PKG)
    assert msg.startswith("STALE") and "0123456789ab" in msg and R.source_hash(PKG) in msg
    legacy = {"v": 1}  # written before the schema existed
    assert "schema 1" in R.staleness(legacy, PKG)
    assert R.staleness(None, PKG) is None


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.json"
    R.write_json(path, {"good": True})
    with pytest.raises(TypeError):
        R.write_json(path, {"bad": object()})  # not JSON-serialisable: fails before the rename
    assert json.loads(path.read_text()) == {"good": True}
    assert not list(tmp_path.glob(".*tmp"))


def test_corrupt_results_file_names_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        R.read_json(p)
    assert R.read_json(tmp_path / "absent.json") is None


def test_source_files_follow_imports_transitively():
    files = {str(f.relative_to(R.ROOT)) for f in R.source_files(PKG)}
    assert "k25mini/experiments/ch05_fusion/stages.py" in files
    assert "k25mini/train/trainer.py" in files  # imported through k25mini.train
    assert "k25mini/experiments/ch08_swarm/run.py" not in files  # another chapter's code does not count
    stages = {str(f.relative_to(R.ROOT)) for f in R.source_files("k25mini.experiments.ch05_fusion.stages")}
    assert "k25mini/experiments/ch05_fusion/config.py" in stages and "k25mini/model/moe.py" in stages
    # a parent package's __init__ counts, but its re-exports (report, checks) do not join the run's code
    assert "k25mini/experiments/ch05_fusion/__init__.py" in stages
    assert "k25mini/experiments/ch05_fusion/report.py" not in stages
    assert "k25mini/experiments/ch05_fusion/checks.py" not in stages
    with pytest.raises(ValueError, match="not a k25mini module"):
        R.source_files("k25mini.no_such_module")


def test_docstring_edits_do_not_change_the_hash(tmp_path):
    a = tmp_path / "a.py"
    a.write_text('"""Doc."""\nx = 1  # comment\n')
    b = tmp_path / "b.py"
    b.write_text('"""Another doc."""\nx = 1\n')
    c = tmp_path / "c.py"
    c.write_text('"""Doc."""\nx = 2\n')
    assert R._code_only(a) == R._code_only(b) != R._code_only(c)


def test_registry_lists_each_experiment_once_with_resolvable_entry_points():
    from k25mini.experiments.registry import EXPERIMENTS, get, resolve

    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names)) and {"fusion_ablation", "swarm"} <= set(names)
    for e in EXPERIMENTS:
        for attr in ("section", "speedrun"):
            if getattr(e, attr) is not None:
                assert callable(e.resolve(attr))
        R.source_files(e.package)  # every package exists
    assert [e.chapter for e in EXPERIMENTS] == sorted(e.chapter for e in EXPERIMENTS)
    with pytest.raises(ValueError, match="registered"):
        get("nope")
    with pytest.raises(ValueError, match="module:function"):
        resolve("no_colon")


def test_experiments_cli_lists_and_refuses_bad_arguments(capsys):
    from k25mini.experiments.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fusion_ablation" in out and "python -m k25mini.experiments.ch05_fusion --workers 2" in out
    for argv, msg in ((["reproduce", "--only", "nope"], "no experiment 'nope'"),
                      (["reproduce", "--only", "world"], "no multi-seed run"),
                      (["reproduce", "--workers", "0"], "--workers must be >= 1")):
        with pytest.raises(SystemExit):
            main(argv)
        assert msg in capsys.readouterr().err
