"""``k25mini serve``: an OpenAI-compatible chat-completions endpoint over any k25mini K2.5 checkpoint.

    python -m k25mini.serve --checkpoint DIR --port 8000
    from openai import OpenAI
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(model=..., messages=...)

Layering: this package imports the model, data, rl and agents packages; nothing else in ``k25mini`` imports it.
FastAPI and uvicorn are needed only here (``pip install -e '.[serve]'``). See docs/serve.md.
"""

from k25mini.serve.app import ServerThread, create_app, load_model
from k25mini.serve.engine import Batcher, ModelEngine, ScriptedEngine, parse_completion, render_prompt
from k25mini.serve.protocol import APIError, Limits, parse_chat_request

__all__ = [
    "APIError",
    "Batcher",
    "Limits",
    "ModelEngine",
    "ScriptedEngine",
    "ServerThread",
    "create_app",
    "load_model",
    "parse_chat_request",
    "parse_completion",
    "render_prompt",
]
