"""Data: the toy tokenizer and 🤗 datasets built from the toy world (cached under data/cache/).

The tokenizer is imported eagerly; dataset helpers load lazily so ``k25mini.world`` can import the
tokenizer's placeholder strings without a circular import.
"""

from k25mini.data.tokenizer import IMAGE_PLACEHOLDER, SPECIAL_TOKENS, Tokenizer, media_placeholder, num_video_chunks

_LAZY = {
    "build_corpus",
    "build_all",
    "load_corpus",
    "decode_media",
    "encode_media",
    "eval_dataset",
    "DATA_VERSION",
    "DEFAULT_CACHE",
    "HUB_NAME",
    "cache_path",
    "item_to_row",
    "row_to_item",
}

__all__ = ["Tokenizer", "SPECIAL_TOKENS", "IMAGE_PLACEHOLDER", "media_placeholder", "num_video_chunks", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        from k25mini.data import datasets as _ds

        return getattr(_ds, name)
    raise AttributeError(f"module 'k25mini.data' has no attribute {name!r}")
