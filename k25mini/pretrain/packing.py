"""Pack text-only and image-text documents into fixed-length sequences under a token plan.

A document is ``Doc(ids, media)``: token ids where every image/video chunk already occupies its
run of ``<|media_pad|>`` tokens (one per merged vision token), and the media arrays in order.

Per step the packer receives a budget (vision tokens, text tokens) from
:func:`k25mini.pretrain.fusion_schedule.token_plan` and fills ``rows`` sequences of ``seq_len`` tokens:

* image-text documents are never split (a media span must stay whole); they are taken while the
  running vision budget allows, and a shortfall carries over to the next step;
* text-only documents form one continuous stream cut exactly at sequence ends (the usual LM
  pre-training practice), so they fill every remaining slot and no padding is ever used;
* on the last step the vision residual (less than one document) is filled with the *text* of
  image-text documents (their media spans dropped), so the totals of every schedule are exact. That text
  is plain text now, so like the text stream it may be cut at a row end: each document's text is laid
  down in order, in the row with the most room, and what does not fit continues in the next row; every
  piece is a document of its own (its own ``doc_ids`` entry, positions from 0).

Each packed row carries ``doc_ids`` (attention never crosses documents), per-document
``position_ids`` and ``labels`` = next token, with -100 where the target is a media pad (no loss on
vision tokens) or crosses a document boundary.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

IGNORE = -100

__all__ = ["Doc", "PackedStep", "MixedPacker", "IGNORE"]


@dataclass
class Doc:
    ids: list[int]
    media: list = field(default_factory=list)  # arrays in order of their pad runs


@dataclass
class PackedStep:
    input_ids: np.ndarray  # [rows, seq_len] int64
    labels: np.ndarray  # [rows, seq_len] int64, IGNORE where no loss
    doc_ids: np.ndarray  # [rows, seq_len] int64, document index within the row
    position_ids: np.ndarray  # [rows, seq_len] int64, restarting at 0 in every document
    media: list  # media arrays in row-major order of their pad runs
    vision_tokens: int  # tokens that came from image-text documents
    text_tokens: int  # tokens that came from text-only documents


class MixedPacker:
    """Stateful packer over two document iterators (text-only, image-text).

    ``pad_id`` is the id of ``<|media_pad|>``; ``media_span_ids`` the ids that open/close a media
    span (``<|media_begin|>``, ``<|media_end|>``), used to drop media when a residual is filled with
    text. ``plan`` is the [steps, 2] array from ``token_plan``.
    """

    def __init__(
        self,
        text_docs: Iterator[Doc],
        vision_docs: Iterator[Doc],
        plan: np.ndarray,
        rows: int,
        seq_len: int,
        pad_id: int,
        media_begin_id: int,
        media_end_id: int,
    ) -> None:
        plan = np.asarray(plan)
        if plan.ndim != 2 or plan.shape[1] != 2:
            raise ValueError(f"plan must have shape [steps, 2], got {plan.shape}")
        if plan.dtype.kind not in "iu":  # a float plan would be truncated token by token
            raise ValueError(f"plan must hold integer token counts, got dtype {plan.dtype}")
        if (plan < 0).any():
            raise ValueError(f"plan must hold token counts >= 0, got a minimum of {int(plan.min())}")
        for name, v in (("rows", rows), ("seq_len", seq_len)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if rows <= 0 or seq_len <= 1:
            raise ValueError(f"rows must be > 0 and seq_len > 1, got rows={rows}, seq_len={seq_len}")
        rows, seq_len = int(rows), int(seq_len)
        if (plan.sum(1) != rows * seq_len).any():
            raise ValueError(f"plan rows must each sum to rows*seq_len = {rows * seq_len}")
        self.text_docs, self.vision_docs = text_docs, vision_docs
        self.plan, self.rows, self.seq_len = plan, rows, seq_len
        self.pad_id, self.mb, self.me = pad_id, media_begin_id, media_end_id
        self.step = 0
        self.vision_target = 0  # cumulative vision budget so far
        self.vision_used = 0
        self._text_buf: deque[tuple[int, int]] = deque()  # (token, doc serial) of the text stream
        self._text_serial = 0
        self._pending: deque[Doc] = deque()  # vision docs drawn but not yet placed

    # ------------------------------------------------------------------ streams
    def _next_vision(self) -> Doc | None:
        if self._pending:
            return self._pending.popleft()
        doc = next(self.vision_docs, None)
        if doc is not None and len(doc.ids) > self.seq_len:
            raise ValueError(f"an image-text document has {len(doc.ids)} tokens > seq_len={self.seq_len}")
        if doc is not None and not doc.ids:  # would be "placed" forever without using any room
            raise ValueError("vision_docs yielded an image-text document with no tokens")
        return doc

    def _text_tokens(self, n: int) -> list[tuple[int, int]]:
        while len(self._text_buf) < n:
            doc = next(self.text_docs, None)
            if doc is None:
                raise ValueError("text_docs ran out before the token plan was consumed")
            if doc.media:
                raise ValueError("text_docs yielded a document with media")
            self._text_serial += 1
            self._text_buf.extend((t, self._text_serial) for t in doc.ids)
        return [self._text_buf.popleft() for _ in range(n)]

    def _strip_media(self, doc: Doc) -> list[int]:
        out, inside = [], False
        for t in doc.ids:
            if t == self.mb:
                inside = True
            elif t == self.me:
                inside = False
            elif not inside and t != self.pad_id:
                out.append(t)
        return out

    # ------------------------------------------------------------------ one step
    def __len__(self) -> int:
        return len(self.plan)

    def next_step(self) -> PackedStep:
        if self.step >= len(self.plan):
            raise StopIteration
        last = self.step == len(self.plan) - 1
        self.vision_target += int(self.plan[self.step, 0])
        R, S = self.rows, self.seq_len
        free = [S] * R
        placed: list[list[Doc]] = [[] for _ in range(R)]
        used = 0
        # 1) whole image-text documents while the running budget allows (first fit)
        while True:
            doc = self._next_vision()
            if doc is None:
                break
            n = len(doc.ids)
            room = self.vision_target - self.vision_used - used
            row = next((r for r in range(R) if free[r] >= n), None)
            if n > room or row is None:
                self._pending.appendleft(doc)
                break
            placed[row].append(doc)
            free[row] -= n
            used += n
        # 2) last step: close the residual with media-free text of image-text documents, each document's text
        #    kept contiguous and in order (one piece per row it spans)
        residual_rows: list[list[list[int]]] = [[] for _ in range(R)]
        if last:
            residual = self.vision_target - self.vision_used - used
            while residual > 0:
                doc = self._next_vision()
                if doc is None:
                    raise ValueError("vision_docs ran out before the token plan was consumed")
                text = self._strip_media(doc)[:residual]
                k = 0
                while k < len(text):
                    r = max(range(R), key=lambda i: free[i])
                    if free[r] == 0:
                        raise ValueError("vision residual does not fit in the last step")
                    piece = text[k : k + free[r]]
                    residual_rows[r].append(piece)
                    free[r] -= len(piece)
                    k += len(piece)
                used += len(text)
                residual -= len(text)
        self.vision_used += used
        # 3) assemble rows: vision docs, residual text, then the continuous text stream
        ids = np.zeros((R, S), np.int64)
        doc_ids = np.zeros((R, S), np.int64)
        pos = np.zeros((R, S), np.int64)
        labels = np.full((R, S), IGNORE, np.int64)
        media: list = []
        text_total = 0
        for r in range(R):
            toks: list[int] = []
            dids: list[int] = []
            d = 0
            for doc in placed[r]:
                toks += doc.ids
                dids += [d] * len(doc.ids)
                media += doc.media
                d += 1
            for piece in residual_rows[r]:
                toks += piece
                dids += [d] * len(piece)
                d += 1
            stream = self._text_tokens(S - len(toks))
            text_total += len(stream)
            prev = None
            for t, serial in stream:
                if serial != prev:
                    d, prev = (d + 1 if prev is not None else d), serial
                toks.append(t)
                dids.append(d)
            ids[r] = toks
            doc_ids[r] = dids
            # positions restart at every document boundary
            starts = np.r_[True, np.diff(doc_ids[r]) != 0]
            idx = np.arange(S)
            pos[r] = idx - np.maximum.accumulate(np.where(starts, idx, 0))
            same = doc_ids[r, 1:] == doc_ids[r, :-1]
            nxt = ids[r, 1:]
            labels[r, :-1] = np.where(same & (nxt != self.pad_id), nxt, IGNORE)
        self.step += 1
        return PackedStep(ids, labels, doc_ids, pos, media, used, text_total)

    def __iter__(self) -> Iterator[PackedStep]:
        while self.step < len(self.plan):
            yield self.next_step()
