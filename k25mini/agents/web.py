"""The web the agents search and browse: any object with ``search(query, k)`` and ``browse(page_id)``
(the :class:`WebBackend` protocol).

The runtime needs nothing else. Methods may be plain or ``async``; may return strings, dicts,
dataclasses or objects with attributes; may raise (the error becomes the agent's observation).
Search hits are rendered one per line, ``[page_id] title: snippet`` when those fields exist
(``id`` / ``url`` also count as the page id; ``text`` / ``summary`` as the snippet), else ``str(hit)``.

Plugging in the project's toy world: pass its ``k25mini.world.Web`` object (a ``WebBackend``) straight to
``SwarmRuntime(web=...)``. If its method names or signatures differ, wrap it in a 10-line adapter class
with these two methods. :class:`FakeWeb` below is a tiny in-memory web for tests and demos.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class WebBackend(Protocol):
    """What the runtime calls. Either method may be ``async``."""

    def search(self, query: str, k: int) -> Any: ...

    def browse(self, page_id: str) -> Any: ...


async def maybe_await(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


def _as_mapping(hit: Any) -> Mapping[str, Any] | None:
    if isinstance(hit, Mapping):
        return hit
    if dataclasses.is_dataclass(hit) and not isinstance(hit, type):
        return dataclasses.asdict(hit)
    if hasattr(hit, "__dict__") and not isinstance(hit, (str, bytes)):
        return {k: v for k, v in vars(hit).items() if not k.startswith("_")}
    return None


def hit_page_id(hit: Any) -> str | None:
    """The page id of a search hit (keys/attributes ``page_id``, ``id`` or ``url``), else None."""
    m = _as_mapping(hit)
    if m is None:
        return None
    for key in ("page_id", "id", "url"):
        if m.get(key) is not None:
            return str(m[key])
    return None


def render_hits(hits: Any) -> str:
    """Search results as text, one hit per line."""
    if isinstance(hits, str):
        return hits
    try:
        items = list(hits)
    except TypeError:
        return str(hits)
    if not items:
        return "(no results)"
    lines = []
    for h in items:
        m = _as_mapping(h)
        if m is None:
            lines.append(str(h))
            continue
        pid = hit_page_id(h)
        title = m.get("title") or m.get("name") or ""
        snippet = m.get("snippet") or m.get("summary") or m.get("text") or ""
        if pid is None and not title and not snippet:
            lines.append(json.dumps(dict(m), default=str, sort_keys=True))
        else:
            lines.append(f"[{pid}] {title}: {snippet}".strip())
    return "\n".join(lines)


def render_page(page: Any) -> str:
    if isinstance(page, str):
        return page
    m = _as_mapping(page)
    if m is not None:
        for key in ("text", "content", "body"):
            if isinstance(m.get(key), str):
                title = m.get("title")
                return f"{title}\n{m[key]}" if title else m[key]
        return json.dumps(dict(m), default=str, sort_keys=True)
    return str(page)


_WORD = re.compile(r"[a-z0-9]+")


class FakeWeb:
    """An in-memory web: ``pages`` maps page id -> text (first line = title). ``search`` ranks pages by
    how many query words they contain (ties by id); ``browse`` returns the page text or raises KeyError.
    ``calls`` records every call, to check what agents did."""

    def __init__(self, pages: Mapping[str, str]) -> None:
        self.pages = dict(pages)
        self.calls: list[tuple[str, str]] = []

    def search(self, query: str, k: int = 5) -> list[dict[str, str]]:
        self.calls.append(("search", query))
        words = set(_WORD.findall(query.lower()))
        scored = []
        for pid, text in self.pages.items():
            score = len(words & set(_WORD.findall(text.lower())))
            if score:
                scored.append((-score, pid))
        out = []
        for _, pid in sorted(scored)[:k]:
            title, _, rest = self.pages[pid].partition("\n")
            out.append({"page_id": pid, "title": title, "snippet": rest[:60]})
        return out

    def browse(self, page_id: str) -> str:
        self.calls.append(("browse", page_id))
        if page_id not in self.pages:
            raise KeyError(f"no page {page_id!r}")
        return self.pages[page_id]
