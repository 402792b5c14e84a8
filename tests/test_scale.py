import pytest

from k25mini import scale


def test_default_is_cpu(monkeypatch):
    monkeypatch.delenv("K25_SCALE", raising=False)
    assert scale.current_scale() == "cpu"
    monkeypatch.setenv("K25_SCALE", "")
    assert scale.current_scale() == "cpu"


@pytest.mark.parametrize("value,expected", [("smoke", "smoke"), ("CPU", "cpu"), (" gpu ", "gpu")])
def test_known_scales(monkeypatch, value, expected):
    monkeypatch.setenv("K25_SCALE", value)
    assert scale.current_scale() == expected


@pytest.mark.parametrize("bad", ["tiny", "large", "cpu2", "1"])
def test_bad_scale_names_the_variable(monkeypatch, bad):
    monkeypatch.setenv("K25_SCALE", bad)
    with pytest.raises(ValueError, match="K25_SCALE"):
        scale.current_scale()


def test_pick(monkeypatch):
    monkeypatch.setenv("K25_SCALE", "smoke")
    assert scale.pick(smoke=1, cpu=2, gpu=3) == 1
    monkeypatch.setenv("K25_SCALE", "gpu")
    assert scale.pick(smoke=1, cpu=2, gpu=3) == 3
    assert scale.pick(smoke=1, cpu=2) == 2  # gpu falls back to cpu
    assert scale.pick(smoke=1, cpu=2, scale="smoke") == 1
    with pytest.raises(ValueError, match="scale"):
        scale.pick(smoke=1, cpu=2, scale="huge")
