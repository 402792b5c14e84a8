"""Data: the toy tokenizer and 🤗 datasets built from the toy world (cached under data/cache/).

Layering: ``k25mini.data`` imports ``k25mini.world``, never the reverse (the media placeholder text the
world's prompts use lives in ``k25mini.world.media``; the tokenizer re-exports it).
"""

from k25mini.data.datasets import (
    DATASET_CACHE_VERSION,
    DEFAULT_CACHE,
    HUB_NAME,
    build_all,
    build_corpus,
    cache_path,
    decode_media,
    encode_media,
    eval_dataset,
    item_to_row,
    load_corpus,
    row_to_item,
)
from k25mini.data.tokenizer import IMAGE_PLACEHOLDER, SPECIAL_TOKENS, Tokenizer, media_placeholder, num_video_chunks

__all__ = [
    "Tokenizer",
    "SPECIAL_TOKENS",
    "IMAGE_PLACEHOLDER",
    "media_placeholder",
    "num_video_chunks",
    "DATASET_CACHE_VERSION",
    "DEFAULT_CACHE",
    "HUB_NAME",
    "build_all",
    "build_corpus",
    "cache_path",
    "decode_media",
    "encode_media",
    "eval_dataset",
    "item_to_row",
    "load_corpus",
    "row_to_item",
]
