"""Notebook 00's from-scratch counters must agree with k25mini.config on every preset."""

import dataclasses

import pytest

from k25mini import config as C
from seam import load_notebook_defs, notebook_source, unresolved_globals

NB = "notebooks/00_tour.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_notebook_defs(NB)


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_text_params_matches_package(nb, name):
    cfg = C.preset(name)
    pc = C.count_params(cfg.text)
    assert nb.text_params(cfg.text) == (pc.total, pc.activated)


def test_text_params_variants(nb):
    base = C.small().text
    for kw in (dict(q_lora_rank=None), dict(tie_word_embeddings=True), dict(n_shared_experts=0),
               dict(first_k_dense_replace=0)):
        t = dataclasses.replace(base, **kw)
        pc = C.count_params(t)
        assert nb.text_params(t) == (pc.total, pc.activated), kw


@pytest.mark.parametrize("kind", ["mla", "mha"])
def test_kv_bytes_matches_package(nb, kind):
    for name in C.PRESETS:
        t = C.preset(name).text
        assert nb.kv_bytes_per_token(t, kind) == C.kv_cache_bytes_per_token(t, kind)


def test_seam_catches_hidden_globals():
    src = "import math\n\ndef f(x):\n    return math.pi * x + SECRET\n"
    assert unresolved_globals(src, {"math": __import__("math"), "f": None}) == {"f": {"SECRET"}}


def test_seam_keeps_only_definitions():
    src = notebook_source(NB)
    assert "plt.show()" not in src and "def text_params" in src
