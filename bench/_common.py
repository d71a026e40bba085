"""Shared benchmark helpers: model choice, machine description, timing, results files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RANDOM_SPECS = ("random:sd1", "random:sd1-full")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model spec for load_model (default: tinyworld if present, else random:sd1); "
                             "also random:sd1 (tiny test-shaped) and random:sd1-full (SD 1.5 architecture, random "
                             "weights, for GPU timings)")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: auto)")
    parser.add_argument("--dtype", default=None, help="fp16 | bf16 | fp32 (default: fp16 on cuda, else fp32)")
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")


def choose_model(args):
    """Load the benchmark model; returns (LoadedModel, spec actually used)."""
    from studio.models import from_pipeline, load_model, repo_root, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = args.model
    if spec is None:
        spec = "tinyworld" if (repo_root() / "assets/tinyworld/model_index.json").is_file() else "random:sd1"
    if spec not in RANDOM_SPECS:
        return load_model(spec, device=args.device, dtype=args.dtype), spec
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipe = random_sd1_full() if spec == "random:sd1-full" else _tiny_sd1()
    pipe.to(device=device, dtype=dtype)
    return from_pipeline(pipe, name=spec), spec


def _tiny_sd1():
    from tests.helpers import tiny_pipeline

    return tiny_pipeline("sd1")


def random_sd1_full():
    """SD 1.5's architecture (860M UNet, 8x VAE, 12-layer CLIP-L text encoder) with random
    weights: realistic compute without downloading anything. Only timings are meaningful."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.helpers import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    return timed2(fn, device)[0]


def timed2(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds). CPU time is far less affected by
    other work sharing the machine; on a GPU, wall time is the figure to use."""
    sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50_s": statistics.median(ordered), "p10_s": pct(0.1), "p90_s": pct(0.9), "min_s": ordered[0],
            "n": len(ordered), "samples_s": [round(s, 5) for s in samples]}


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)}
    if hasattr(os, "getloadavg"):
        info["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)  # >cpu_count means other work shared the CPUs
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def write_results(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([Path(sys.executable).name] + sys.argv), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
