"""World corpora -> token documents for packing (:class:`k25mini.pretrain.packing.Doc`).

A corpus row is tokenized as ``<|bos|> text <|eos|>`` (byte-level), and every single ``<|media_pad|>``
placeholder is expanded to the number of merged vision tokens its image/video chunk yields
(``counts_fn(array) -> [tokens per chunk]``, e.g. ``K25ForConditionalGeneration.media_token_counts``).
The EOS teaches the model to stop after a short answer, which greedy evaluation relies on.

:func:`doc_stream` is an endless, seeded stream over several corpora: epoch ``e`` visits every
(corpus, row) pair once in a permutation drawn from ``rng_for(seed, "fusion-docs", tag, e)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.packing import Doc
from k25mini.world import CORPORA, Item, World, corpus_item
from k25mini.world.rng import rng_for

__all__ = ["item_to_doc", "prompt_ids", "doc_stream", "CountsFn"]

CountsFn = Callable[[np.ndarray], list[int]]


def _media_counts(images: Sequence[np.ndarray], counts_fn: CountsFn) -> list[int]:
    return [int(c) for img in images for c in counts_fn(img)]


def item_to_doc(item: Item, tok: Tokenizer, counts_fn: CountsFn) -> Doc:
    """``<|bos|> item.text() <|eos|>`` with each media placeholder expanded to its vision-token count."""
    ids = tok.encode(item.text(), add_bos=True, add_eos=True)
    ids = tok.expand_media(ids, _media_counts(item.images, counts_fn))
    return Doc(ids, list(item.images))


def prompt_ids(item: Item, tok: Tokenizer, counts_fn: CountsFn) -> list[int]:
    """The generation prompt of an eval item: ``<|bos|> prompt + " "`` (training text is ``prompt + " " + answer``),
    media expanded as in :func:`item_to_doc`, so the prompt is an exact prefix of the training document."""
    ids = tok.encode(item.prompt + " ", add_bos=True)
    return tok.expand_media(ids, _media_counts(item.images, counts_fn))


def doc_stream(
    world: World,
    corpora: Sequence[str],
    tok: Tokenizer,
    counts_fn: CountsFn,
    seed: int,
    max_len: int | None = None,
    skills: frozenset[str] | None = None,
    tag: str = "",
) -> Iterator[Doc]:
    """Endless documents from ``corpora`` (rows ``0 .. world.sizes.corpus_rows - 1`` of each), reshuffled
    every epoch. ``max_len`` drops longer documents (an image-text document must fit one sequence);
    ``skills`` keeps only rows whose ``meta["skill"]`` is listed (e.g. caption-style rows for the ViT stage)."""
    corpora = list(corpora)
    if not corpora:
        raise ValueError("corpora must name at least one corpus")
    for c in corpora:
        if c not in CORPORA:
            raise ValueError(f"corpora must be names from {sorted(CORPORA)}, got {c!r}")
    rows = world.sizes.corpus_rows
    pairs = np.array([(ci, r) for ci in range(len(corpora)) for r in range(rows)], dtype=np.int64)
    epoch = 0
    while True:
        kept = 0
        for k in rng_for(seed, "fusion-docs", tag, tuple(corpora), epoch).permutation(len(pairs)):
            ci, r = pairs[int(k)]
            item = corpus_item(world, corpora[int(ci)], int(r))
            if skills is not None and item.meta.get("skill") not in skills:
                continue
            doc = item_to_doc(item, tok, counts_fn)
            if max_len is not None and len(doc.ids) > max_len:
                continue
            kept += 1
            yield doc
        if kept == 0:
            raise ValueError(f"no document of {corpora} passes the filters (max_len={max_len}, skills={skills})")
        epoch += 1
