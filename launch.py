#!/usr/bin/env python
"""Serve the Controllable Diffusion Studio.

    python launch.py                        # Tiny World on http://127.0.0.1:7860 (this machine only)
    python launch.py --listen --port 8080   # reachable from the network (0.0.0.0)
    python launch.py --model runwayml/stable-diffusion-v1-5 --auth me:secret
    python launch.py --model ./my-model --outputs ~/studio-outputs --device cuda --dtype fp16

A model that cannot be loaded prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def parse_auth(text: str) -> tuple[str, str]:
    """``user:pass`` -> ``(user, pass)``; the password may contain ':'."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(
            f"expected USER:PASSWORD with both parts non-empty (e.g. --auth alice:s3cret), got {text!r}")
    if any(c.isspace() for c in user):
        raise argparse.ArgumentTypeError(f"the user name must not contain spaces, got {user!r}")
    return user, password


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 1..65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be an integer in 1..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Serve the Controllable Diffusion Studio web UI.")
    p.add_argument("--model", default="tinyworld",
                   help="tinyworld (default), a Hugging Face hub id, a diffusers folder or a .safetensors file")
    p.add_argument("--outputs", default="outputs", type=Path,
                   help="folder for generated images and their history (default: ./outputs)")
    p.add_argument("--port", default=7860, type=parse_port, help="port to serve on (default: 7860)")
    p.add_argument("--listen", action="store_true",
                   help="serve on all interfaces (0.0.0.0) instead of this machine only (127.0.0.1)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--auth", type=parse_auth, metavar="USER:PASSWORD", help="require this login")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="weights dtype (default: fp16 on cuda)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow .ckpt/.pt/.bin pickle checkpoints (they can run arbitrary code when loaded)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from studio.models import ModelLoadError, load_model
    from studio.outputs import OutputsError

    print(f"Loading model {args.model} ...", flush=True)
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from studio.ui import build_app, launch_app

    try:
        demo = build_app(model, args.outputs)
    except OutputsError as e:
        print(f"error: outputs folder {args.outputs}: {e}", file=sys.stderr)
        return EXIT_USAGE
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"Model {model.name} on {model.device} ({str(model.dtype).removeprefix('torch.')}); "
          f"outputs in {Path(args.outputs).resolve()}", flush=True)
    try:
        launch_app(demo, host=host, port=args.port, share=args.share, auth=args.auth)
    except OSError as e:  # e.g. the port is taken
        print(f"error: cannot serve on {host}:{args.port}: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        demo.studio_store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
