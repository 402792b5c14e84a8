"""Servers for the serve tests: a smoke-scale checkpoint (the printable random nano VLM written with
``save_pretrained`` and loaded back the way ``python -m k25mini.serve`` loads it) and a scripted stand-in
model for deterministic tool calls. Each runs uvicorn on a free loopback port in a thread, once per session."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

from k25mini.interop import save_pretrained  # noqa: E402
from k25mini.serve import ModelEngine, ScriptedEngine, ServerThread, create_app, load_model  # noqa: E402
from tests.rl.printable import printable_model  # noqa: E402

MODEL = "k25mini-nano-smoke"


def png_url(h: int = 32, w: int = 48, seed: int = 0, fmt: str = "PNG") -> str:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    mime = "png" if fmt == "PNG" else "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "nano-smoke"
    save_pretrained(printable_model(), path)
    return path


@pytest.fixture(scope="session")
def model_server(checkpoint):
    app = create_app(ModelEngine(load_model(checkpoint)), MODEL, batch_wait_s=0.02)
    with ServerThread(app) as srv:
        yield srv


def weather_rule(prompt: str, i: int) -> str:
    """Two parallel calls on the first turn; an answer quoting the tool results once they are in the prompt."""
    results = re.findall(r"<\|tool_result_begin\|>(.*?)<\|tool_result_end\|>", prompt)
    if results:
        return "It is " + " and ".join(results) + ".<|im_end|>"
    return ("Let me check.<|tool_calls_section_begin|>"
            '<|tool_call_begin|>functions.weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
            '<|tool_call_begin|>functions.weather:1<|tool_call_argument_begin|>{"city": "Oslo"}<|tool_call_end|>'
            "<|tool_calls_section_end|><|im_end|>")


@pytest.fixture(scope="session")
def scripted_server():
    with ServerThread(create_app(ScriptedEngine(weather_rule), "scripted")) as srv:
        yield srv


@pytest.fixture()
def client(model_server):
    from openai import OpenAI

    return OpenAI(base_url=model_server.url, api_key="unused", max_retries=0, timeout=60)
