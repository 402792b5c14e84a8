"""🤗 datasets built from the toy world, cached under ``data/cache/`` (git-ignored).

Every corpus and eval suite becomes a ``datasets.Dataset`` with one schema::

    id, corpus, suite, skill, text, prompt, answer : string
    media : list of {png: binary, frames: int32}   # one entry per image/video, in placeholder order
    meta  : string (JSON ground truth)

Images are stored as lossless PNG bytes (small, deterministic); a video of ``T`` frames is one PNG of
its frames stacked vertically with ``frames = T`` (``frames = 0`` marks a still image).
:func:`decode_media` gives back ``uint8 [H, W, 3]`` / ``[T, H, W, 3]`` arrays.

Cache key (corpora and eval sets): ``<name>-seed<seed>-<scale>-v<DATASET_CACHE_VERSION>``; change
``DATASET_CACHE_VERSION`` whenever a generator changes its output. :func:`load_corpus` also accepts a local
``save_to_disk`` folder or a hub dataset name (``HUB_NAME``-style ``owner/repo`` with one config per corpus);
tests never touch the hub.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from k25mini.scale import current_scale, validate_scale
from k25mini.world.corpora import CORPORA, check_corpus, iter_corpus
from k25mini.world.evals import make_eval_suite
from k25mini.world.items import Item, check_suite
from k25mini.world.world import World, check_seed

__all__ = [
    "DATASET_CACHE_VERSION",
    "DEFAULT_CACHE",
    "HUB_NAME",
    "FEATURES",
    "cache_path",
    "encode_media",
    "decode_media",
    "item_to_row",
    "row_to_item",
    "build_corpus",
    "build_all",
    "eval_dataset",
    "load_corpus",
]

DATASET_CACHE_VERSION = "1"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "data" / "cache"
# Where a published copy would live (push with ``ds.push_to_hub(HUB_NAME, config_name=corpus)``).
# It is documentation only: nothing in the project downloads it.
HUB_NAME = "k25mini/toy-world"


def _features():
    from datasets import Features, Value

    return Features(
        {
            "id": Value("string"),
            "corpus": Value("string"),
            "suite": Value("string"),
            "skill": Value("string"),
            "text": Value("string"),
            "prompt": Value("string"),
            "answer": Value("string"),
            "media": [{"png": Value("binary"), "frames": Value("int32")}],
            "meta": Value("string"),
        }
    )


FEATURES = None  # filled lazily by _features() (keeps `import k25mini.data` light)


# ------------------------------------------------------------------------------------------ media
def encode_media(arr: np.ndarray) -> dict[str, Any]:
    """``uint8 [H, W, 3]`` or ``[T, H, W, 3]`` -> ``{"png": bytes, "frames": T or 0}``."""
    a = np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"arr must be uint8 [H, W, 3] or [T, H, W, 3], got {a.dtype} {a.shape}")
    frames = 0 if a.ndim == 3 else a.shape[0]
    flat = a if a.ndim == 3 else a.reshape(-1, a.shape[2], 3)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(flat), "RGB").save(buf, format="PNG", compress_level=6)
    return {"png": buf.getvalue(), "frames": int(frames)}


def _decode_one(m: dict[str, Any]) -> np.ndarray:
    a = np.array(Image.open(io.BytesIO(m["png"])).convert("RGB"), dtype=np.uint8)
    t = int(m["frames"])
    return a if t == 0 else a.reshape(t, a.shape[0] // t, a.shape[1], 3)


def decode_media(row: dict[str, Any]) -> list[np.ndarray]:
    """The images/videos of a dataset row as uint8 arrays, in placeholder order."""
    return [_decode_one(m) for m in row["media"]]


def item_to_row(item: Item, corpus: str, index: int) -> dict[str, Any]:
    return {
        "id": f"{corpus}-{index:06d}",
        "corpus": corpus,
        "suite": item.suite,
        "skill": str(item.meta.get("skill", "")),
        "text": item.text(),
        "prompt": item.prompt,
        "answer": item.answer,
        "media": [encode_media(a) for a in item.images],
        "meta": json.dumps(item.meta, sort_keys=True, default=_json_default),
    }


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def row_to_item(row: dict[str, Any]) -> Item:
    """A dataset row back to an :class:`Item` (images decoded, meta parsed)."""
    return Item(row["suite"], row["prompt"], decode_media(row), row["answer"], json.loads(row["meta"]))


# ------------------------------------------------------------------------------------------ building
def _scale(scale: str | None) -> str:
    return current_scale() if scale is None else validate_scale(scale, "scale")


def cache_path(
    name: str,
    seed: int,
    scale: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    n_rows: int | None = None,
) -> Path:
    base = Path(DEFAULT_CACHE if cache_dir is None else cache_dir)
    extra = "" if n_rows is None else f"-n{n_rows}"
    return base / f"{name}-seed{check_seed(seed)}-{_scale(scale)}{extra}-v{DATASET_CACHE_VERSION}"


def _gen_corpus(name: str, seed: int, scale: str, n_rows: int | None):
    world = World(seed=seed, scale=scale)
    for i, item in enumerate(iter_corpus(world, name, n_rows)):
        yield item_to_row(item, name, i)


def _gen_eval(suite: str, seed: int, scale: str, n: int | None):
    world = World(seed=seed, scale=scale)
    for i, item in enumerate(make_eval_suite(world, suite, n)):
        yield item_to_row(item, f"eval_{suite}", i)


def _build(path: Path, gen, gen_kwargs: dict, force: bool):
    from datasets import Dataset, load_from_disk

    if path.exists() and not force:
        return load_from_disk(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        ds = Dataset.from_generator(gen, features=_features(), gen_kwargs=gen_kwargs, cache_dir=os.path.join(tmp, "hf"))
        staged = Path(tmp) / "out"
        ds.save_to_disk(str(staged))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)  # publish atomically: a half-written cache is never loaded
    return load_from_disk(str(path))


def build_corpus(
    name: str,
    seed: int = 0,
    scale: str | None = None,
    n_rows: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
):
    """Build (or load from cache) the training corpus ``name`` -> ``datasets.Dataset``."""
    check_corpus(name)
    seed, sc = check_seed(seed), _scale(scale)
    if n_rows is not None and (isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0):
        raise ValueError(f"n_rows must be an int >= 0, got {n_rows!r}")
    path = cache_path(name, seed, sc, cache_dir, n_rows)
    return _build(path, _gen_corpus, {"name": name, "seed": seed, "scale": sc, "n_rows": n_rows}, force)


def eval_dataset(
    suite: str,
    seed: int = 0,
    scale: str | None = None,
    n: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
):
    """The held-out eval suite as a Dataset (same schema; ``row_to_item`` gives items to :func:`score`)."""
    check_suite(suite)
    seed, sc = check_seed(seed), _scale(scale)
    path = cache_path(f"eval_{suite}", seed, sc, cache_dir, n)
    return _build(path, _gen_eval, {"suite": suite, "seed": seed, "scale": sc, "n": n}, force)


def build_all(
    seed: int = 0, scale: str | None = None, cache_dir: str | os.PathLike | None = None, force: bool = False
) -> dict[str, Any]:
    """Every training corpus at ``scale`` -> {name: Dataset}."""
    return {name: build_corpus(name, seed, scale, cache_dir=cache_dir, force=force) for name in CORPORA}


def load_corpus(
    name_or_path: str,
    seed: int = 0,
    scale: str | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    config: str | None = None,
):
    """A corpus by toy-world name (built/cached), by local ``save_to_disk`` path, or by hub name.

    * ``"captions"`` -> :func:`build_corpus` (seed/scale apply);
    * an existing directory -> ``datasets.load_from_disk`` (``split`` picked from a DatasetDict);
    * otherwise ``owner/repo`` -> ``datasets.load_dataset(name, config, split=split)`` (needs network).
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"name_or_path must be a corpus name, a local path or a hub name, got {name_or_path!r}")
    s = str(name_or_path)
    if s in CORPORA:
        return build_corpus(s, seed, scale, cache_dir=cache_dir)
    from datasets import DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(s):
        ds = load_from_disk(s)
        return ds[split] if isinstance(ds, DatasetDict) else ds
    if "/" not in s:
        raise ValueError(
            f"name_or_path must be one of {sorted(CORPORA)}, an existing directory, or 'owner/repo'; got {s!r}"
        )
    return load_dataset(s, config, split=split)  # pragma: no cover - network
