"""Chapter 06's SFT data: tool-use trajectories in text, and their token encoding.

A :class:`Trajectory` is a world question followed by what the assistant does::

    <|bos|>{prompt} <|tool_call_begin|>python<|tool_call_argument_begin|>{"code": "..."}<|tool_call_end|>
    <|tool_result_begin|>{what the kernel printed}<|tool_result_end|>{answer}<|eos|>

(no line breaks: one sequence) or, with no call, ``<|bos|>{prompt} {answer}<|eos|>`` as in pre-training. Only the
assistant's tokens (the call and the answer with its ``<|eos|>``) are trained; the prompt and the tool result
are context.

Three makers, one format:

* :func:`text_twin` - **zero-vision**: the picture is *described in text* (a list of objects with their cells,
  a table of bar values, the object's centre per frame) in place of the media placeholder. The model never gets
  pixels; the kernel gets the array the text describes (drawn by the world's renderer), so the program's output
  is real.
* :func:`visual_trajectory` - the hand-made visual baseline: the same call on the image itself (media tokens).
* :func:`direct` - an answer with no call (text replay, and questions no short program answers).

The observation a trajectory holds is what :class:`k25mini.tools.CodeTool` printed when the program ran (see
:func:`run_programs`), never the world's truth.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from k25mini.agents.toolcall import DEFAULT_FORMAT, format_tool_call
from k25mini.data.tokenizer import Tokenizer
from k25mini.pretrain.docs import item_to_doc, prompt_ids
from k25mini.sft.programs import palette_setup, program_for
from k25mini.tools import helpers as _helpers
from k25mini.world import Item

__all__ = [
    "TOOL_NAME",
    "Trajectory",
    "describe_media",
    "text_twin",
    "CONTEXTS",
    "TOOLS_SYSTEM",
    "blank_media",
    "with_system",
    "visual_trajectory",
    "direct",
    "document",
    "call_text",
    "result_text",
    "encode_trajectory",
    "parse_code_call",
    "MAX_RESULT_CHARS",
    "run_programs",
    "tool_runner",
    "local_runner",
]

TOOL_NAME = "python"
MAX_RESULT_CHARS = 160  # the kernel's output as the model reads it (longer output is cut, with a marker)
RESULT_BEGIN, RESULT_END = "<|tool_result_begin|>", "<|tool_result_end|>"


@dataclass
class Trajectory:
    """One SFT example. ``item``: the question as the model reads it (prompt, images as media tokens) with
    its gold ``answer``; ``code``: the program (None: answer directly); ``result``: the kernel's output;
    ``kernel_image`` / ``kernel_frames``: the array(s) the kernel gets; ``meta``: kind, style, source."""

    item: Item
    code: str | None = None
    result: str | None = None
    kernel_image: np.ndarray | None = None
    kernel_frames: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_tool(self) -> bool:
        return self.code is not None

    def text(self) -> str:
        """The whole trajectory as text (for reading; :func:`encode_trajectory` makes the tokens)."""
        if self.code is None:
            return f"{self.item.prompt} {self.item.answer}"
        return f"{self.item.prompt} {call_text(self.code)}{result_text(self.result or '')}{self.item.answer}"


def call_text(code: str) -> str:
    """The assistant's tool call for ``code`` (Kimi K2's markers, JSON arguments)."""
    return format_tool_call(TOOL_NAME, {"code": code})


def result_text(output: str, limit: int = MAX_RESULT_CHARS) -> str:
    """The tool result as the model reads it: stripped, cut to ``limit`` characters."""
    out = output.strip()
    if len(out) > limit:
        out = out[:limit] + f"...[{len(out) - limit} more]"
    return f"{RESULT_BEGIN}{out}{RESULT_END}"


def parse_code_call(text: str) -> tuple[str | None, str | None]:
    """``(code, error)`` of a generated call ``<|tool_call_begin|>python<|tool_call_argument_begin|>{...}`` (the
    closing marker optional): the code, or why the call is not a valid ``python`` call."""
    fmt = DEFAULT_FORMAT
    if fmt.call_begin not in text:
        return None, "no tool call"
    body = text.split(fmt.call_begin, 1)[1].split(fmt.call_end, 1)[0]
    if fmt.arg_begin not in body:
        return None, "call without an argument marker"
    name, arg = body.split(fmt.arg_begin, 1)
    if name.strip() not in (TOOL_NAME, f"functions.{TOOL_NAME}"):
        return None, f"unknown tool {name.strip()!r}"
    try:
        args = json.loads(arg)
    except json.JSONDecodeError as e:
        return None, f"arguments are not JSON: {e.msg}"
    if not isinstance(args, dict) or not isinstance(args.get("code"), str):
        return None, 'arguments must be {"code": "<python>"}'
    return args["code"], None


# ------------------------------------------------------------------------------------------------ describing
def _cells(truth: dict) -> str:
    return ", ".join(f"{o['colour']} {o['shape']} at {o['cell'][0]} {o['cell'][1]}" for o in truth["objects"])


def describe_media(item: Item) -> str:
    """A text description of the item's picture, from its truth: what zero-vision SFT shows instead of pixels."""
    truth = item.meta.get("truth")
    if not isinstance(truth, dict):
        raise ValueError(f"item of skill {item.meta.get('skill')!r} has no rendered truth to describe")
    if "objects" in truth:
        return f"Scene: {_cells(truth)}."
    if "bars" in truth:
        return "Bars: " + ", ".join(f"{b['colour']} {b['value']}" for b in truth["bars"]) + "."
    if "centres" in truth:
        path = "; ".join(f"{x} {y}" for x, y in truth["centres"])
        return f"{truth['colour']} {truth['shape']} centres: {path}."
    raise ValueError(f"cannot describe a truth with keys {sorted(truth)}")


def _strip_media(prompt: str) -> str:
    """The prompt with its media block removed (images and videos)."""
    start = prompt.find("<|media_begin|>")
    if start < 0:
        return prompt
    end = prompt.find("<|media_end|>", start)
    return prompt[:start] + prompt[end + len("<|media_end|>") :]


def _kernel_arrays(item: Item) -> tuple[np.ndarray | None, np.ndarray | None]:
    if len(item.images) != 1:
        raise ValueError(f"a tool question holds exactly one image or video, got {len(item.images)}")
    a = item.images[0]
    return (None, a) if a.ndim == 4 else (a, None)


#: a system turn that declares the code tool, put before every question of a conversation where the tool is
#: available: SFT rows (documents excepted) and the prompts of a rollout with the tool. Pre-training never shows
#: it, so it marks "assistant with a python tool", whatever the question's modality
TOOLS_SYSTEM = "<|im_system|>tools: python<|im_end|>"


def with_system(item: Item, system: str) -> Item:
    """``item`` with ``system`` before its prompt (the same item when ``system`` is empty); images and meta are
    shared, not copied."""
    if not isinstance(system, str):
        raise ValueError(f"system must be a str, got {type(system).__name__}")
    return item if not system else Item(item.suite, system + item.prompt, item.images, item.answer, item.meta)


CONTEXTS = ("describe", "none", "stub", "blank")
#: the media markup of an image with no vision tokens in it: the text says "a picture is here", no pixel is shown
MEDIA_STUB = "<|media_begin|>image<|media_content|><|media_end|>"
#: the same for a video
VIDEO_STUB = "<|media_begin|>video<|media_content|><|media_end|>"


def blank_media(a: np.ndarray) -> np.ndarray:
    """An image (or video) of the same shape as ``a`` filled with its most frequent colour (the background): vision
    tokens that say "a picture is here" and carry nothing of what is in it."""
    if not isinstance(a, np.ndarray) or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] image or [T, H, W, 3] video, got {getattr(a, 'shape', type(a))}")
    px = a.reshape(-1, 3)
    colours, counts = np.unique(px, axis=0, return_counts=True)
    return np.broadcast_to(colours[int(np.argmax(counts))], a.shape).astype(a.dtype)


def media_stub(item: Item) -> str:
    """The empty media markup for ``item``'s one image or video (a 4-D array is a video)."""
    img, frames = _kernel_arrays(item)
    return VIDEO_STUB if frames is not None else MEDIA_STUB


def text_twin(item: Item, style: str = "concise", context: str = "describe") -> Trajectory:
    """Zero-vision trajectory: the question in text, the program on the kernel's array (result unset: see
    :func:`run_programs`). ``context="describe"`` puts a text description of the picture before the question;
    ``"none"`` gives the question alone (the picture is only in the kernel); ``"stub"`` the question after an empty
    media block (markup saying a picture belongs here, with no vision token in it); ``"blank"`` the question after
    the media block of a *blank* picture of the same size (:func:`blank_media`: vision tokens, but none of the
    picture's content; a labelled deviation from text-only, docs/zero_vision_sft.md). Questions with no program become
    direct answers from the description (and are refused with ``context="none"``: nothing to answer from)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    q = _strip_media(item.prompt)
    prompt = {"describe": f"{describe_media(item)} {q}", "none": q, "stub": f"{media_stub(item)}{q}",
              "blank": item.prompt}[context]
    shown = [blank_media(a) for a in item.images] if context == "blank" else []
    text_item = Item(item.suite, prompt, shown, item.answer, {**item.meta, "twin_of": item.meta.get("skill")})
    prog = program_for(item.prompt)
    meta = {"source": "text_twin", "skill": item.meta.get("skill"), "style": style, "context": context}
    if prog is None:
        if context != "describe":
            raise ValueError(f"no program answers {item.prompt!r}, and with context={context!r} nothing else can")
        return Trajectory(text_item, meta={**meta, "kind": "direct"})
    img, frames = _kernel_arrays(item)
    return Trajectory(text_item, prog.code(style), None, img, frames, {**meta, "kind": prog.kind})


def visual_trajectory(item: Item, style: str = "concise") -> Trajectory:
    """The visual baseline: the same call, the model reading the image as media tokens."""
    prog = program_for(item.prompt)
    if prog is None:
        raise ValueError(f"no program answers {item.prompt!r}; visual trajectories need one")
    img, frames = _kernel_arrays(item)
    return Trajectory(item, prog.code(style), None, img, frames,
                      {"source": "visual", "skill": item.meta.get("skill"), "style": style, "kind": prog.kind})


def direct(item: Item, source: str = "direct") -> Trajectory:
    """No call: the answer right after the prompt (as in pre-training); ``source`` labels where the item came from
    (the SFT set builder passes ``"replay"`` for its pre-training replay)."""
    return Trajectory(item, meta={"source": source, "skill": item.meta.get("skill"), "kind": "direct"})


def document(item: Item, source: str = "replay") -> Trajectory:
    """A pre-training document (``item.answer`` empty, the text in ``prompt``, e.g. an encyclopedia page) replayed
    as pre-training trains it: every token after ``<|bos|>`` is trained."""
    if item.answer:
        raise ValueError("a document row needs an item with an empty answer (its text in prompt)")
    return Trajectory(item, meta={"source": source, "skill": item.meta.get("skill"), "kind": "document"})


# ------------------------------------------------------------------------------------------------ encoding
def encode_trajectory(traj: Trajectory, tok: Tokenizer, counts_fn) -> tuple[list[int], list[bool], list[np.ndarray]]:
    """Token ids, a per-token *trained* flag (True where the token is the assistant's: the call, the answer and
    ``<|eos|>``) and the media, in order. The prompt part is exactly :func:`prompt_ids` of the item, so a model
    trained on it sees at test time the prefix it was trained on. A ``document`` row is pre-training's
    :func:`~k25mini.pretrain.docs.item_to_doc` with every token after ``<|bos|>`` trained."""
    if traj.meta.get("kind") == "document":
        doc = item_to_doc(traj.item, tok, counts_fn)
        return list(doc.ids), [False] + [True] * (len(doc.ids) - 1), list(doc.media)
    if traj.uses_tool and traj.result is None:
        raise ValueError("trajectory has a call but no tool result: run it first (run_programs)")
    ids = prompt_ids(traj.item, tok, counts_fn)
    train = [False] * len(ids)

    def add(text: str, trained: bool) -> None:
        new = tok.encode(text)
        ids.extend(new)
        train.extend([trained] * len(new))

    if traj.uses_tool:
        add(call_text(traj.code), True)
        add(result_text(traj.result), False)
    add(traj.item.answer, True)
    ids.append(tok.eos_id)
    train.append(True)
    return ids, train, list(traj.item.images)


def run_programs(trajs: Sequence[Trajectory], runner: Callable[[str, np.ndarray | None, np.ndarray | None],
                 tuple[bool, str]]) -> list[Trajectory]:
    """Run each trajectory's program with ``runner(code, image, frames) -> (ok, printed)`` (:func:`tool_runner`
    or, for the scripted programs only, :func:`local_runner`) and store what it printed as the result. A
    program that fails or whose output is not the gold answer is dropped (rejection sampling; the count is the
    returned list's ``dropped`` attribute). Direct trajectories pass through."""
    kept: list[Trajectory] = []
    dropped = 0
    for t in trajs:
        if not t.uses_tool:
            kept.append(t)
            continue
        ok, out = runner(t.code, t.kernel_image, t.kernel_frames)
        out = out.strip()
        if not ok or out != t.item.answer:
            dropped += 1
            continue
        t.result = out
        kept.append(t)
    return _Kept(kept, dropped)


class _Kept(list):
    """A list of kept trajectories with the rejection count as ``dropped`` (slices and copies keep it)."""

    def __init__(self, items, dropped: int) -> None:
        super().__init__(items)
        self.dropped = dropped

    def __getitem__(self, i):
        got = super().__getitem__(i)
        return _Kept(got, self.dropped) if isinstance(i, slice) else got

    def copy(self) -> _Kept:
        return _Kept(self, self.dropped)


def tool_runner(tool) -> Callable[[str, np.ndarray | None, np.ndarray | None], tuple[bool, str]]:
    """A runner that executes each program in a fresh sandboxed episode of ``tool`` (a ``CodeTool``)."""

    def run(code: str, image, frames) -> tuple[bool, str]:
        tool.start(image=image, frames=frames, setup=palette_setup())
        try:
            obs = tool.run(code)
        finally:
            tool.close()
        return obs.ok, obs.text

    return run


def local_runner(code: str, image: np.ndarray | None, frames: np.ndarray | None) -> tuple[bool, str]:
    """Run one of OUR scripted programs (:func:`k25mini.sft.programs.program_for`) in this process, for building
    training data quickly: the helpers and palette in a fresh namespace, stdout captured. Refuses any other
    code - model-written code only ever runs in the sandbox (:func:`tool_runner`, :mod:`k25mini.sft.rollout`)."""
    if code not in _SCRIPTED:
        raise ValueError("local_runner runs only the scripted programs of k25mini.sft.programs; "
                         "run other code through the sandboxed tool (tool_runner)")
    ns: dict[str, Any] = {"__name__": "k25mini_program"}
    exec(compile(Path(_helpers.__file__).read_text(), "k25mini_helpers", "exec"), ns)  # noqa: S102
    exec(palette_setup(), ns)  # noqa: S102
    if image is not None:
        ns["image"] = np.array(image)
    if frames is not None:
        ns["frames"] = np.array(frames)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(code, ns)  # noqa: S102
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"
    return True, buf.getvalue()


def _scripted_programs() -> frozenset[str]:
    from k25mini.sft.programs import all_programs

    return frozenset(all_programs())


_SCRIPTED = _scripted_programs()
