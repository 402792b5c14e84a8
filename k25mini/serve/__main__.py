"""``python -m k25mini.serve --checkpoint DIR [--host 127.0.0.1] [--port 8000]``: serve a checkpoint over HTTP."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m k25mini.serve", description=__doc__)
    ap.add_argument("--checkpoint", required=True,
                    help="a save_pretrained folder (config.json) or a training checkpoint / root / out_dir")
    ap.add_argument("--preset", default="nano", help="architecture of a training checkpoint (default: nano)")
    ap.add_argument("--model-name", default=None, help="the model id clients send (default: the folder name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--max-queue", type=int, default=128, help="waiting requests before 503 (default 128)")
    ap.add_argument("--max-batch", type=int, default=32, help="requests per batch (default 32)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default 10)")
    ap.add_argument("--max-tokens", type=int, default=512, help="the largest max_tokens a request may ask for")
    ap.add_argument("--template", choices=("chat", "plain"), default="chat",
                    help="chat: Kimi's chat layout with tools; plain: the toy world's question format that the "
                         "chapter checkpoints were trained on (answers end at a newline)")
    args = ap.parse_args(argv)

    import torch
    import uvicorn

    from k25mini.serve.app import create_app, load_model
    from k25mini.serve.engine import ModelEngine
    from k25mini.serve.protocol import Limits

    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    try:
        model = load_model(ckpt, preset=args.preset)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    name = args.model_name or ckpt.resolve().name
    app = create_app(ModelEngine(model, batch_size=args.max_batch), name, limits=Limits(max_tokens=args.max_tokens),
                     max_queue=args.max_queue, max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1000,
                     template=args.template)
    print(f"k25mini serve: model {name!r} at http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", backlog=512)
    finally:
        app.state.batcher.close()


if __name__ == "__main__":
    main()
