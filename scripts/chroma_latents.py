"""Make a Tiny World folder whose latent space carries colour at a lower amplitude (an experiment).

Why: on Tiny World colour and layout are settled at the same noise level (both in the first third of DPM++'s 20
steps), so prompt editing at 0.5, per-stage prompts (layout early, colour late) and prompt-to-prompt colour swaps
miss. A diffusion model resolves a latent direction at the noise level where that direction's signal-to-noise
ratio crosses some threshold; scaling the chroma directions of the latent by s shifts their log-SNR by 2 ln s, so
colour is decided later while luminance (where most layout lives) is decided as before. ``--luma-scale`` also
multiplies the luminance read-out (> 1: decided earlier); tried at 1.6 on top of a second chroma scale, it settled
colour earlier as well, since a colour is partly a luminance (``assets/tinyworld-chroma/README.md``).

How, in the stock diffusers format: a 4x4 linear map A is folded into the VAE's 1x1 ``quant_conv`` (the latent
mean rows: z' = A z) and its inverse into ``post_quant_conv``, so encode/decode round-trips exactly as before. A
keeps the luminance read-out of the latent (``latent_preview.json``) and multiplies the two chroma read-outs
(R - Y, B - Y) by s. The UNet's ``conv_in`` gets A^-1 and ``conv_out`` gets A, so on clean latents it computes what
it did before; the noise is isotropic in the new space, so the UNet must then be fine-tuned
(``python -m studio.tinyworld.train --init-from OUT ...``). ``latent_stats.safetensors`` is copied unchanged, so in
OUT it still describes the old space; the fine-tune's export stage refits it (and the preview map) from its latents.

    python scripts/chroma_latents.py --model assets/tinyworld --scale 0.45 --out /tmp/tw_chroma/init
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from studio.tinyworld.scenes import SceneSpec, generate_scene

LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def latent_covariance(vae: AutoencoderKL, n_scenes: int) -> torch.Tensor:
    """4x4 covariance of the scaled latent over latent pixels of generator scenes."""
    spec = SceneSpec(continuous_sizes=True, single_share=0.65, continuous_colours=0.5)
    images = np.stack([np.asarray(generate_scene(10_000_000 + i, spec).image) for i in range(n_scenes)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    return torch.cov(flat.T)


def chroma_map(readout: torch.Tensor, cov: torch.Tensor, scale: float, luma: float = 1.0) -> torch.Tensor:
    """A (4x4) with c^T A = scale c^T for the two chroma read-outs c and y^T A = luma y^T for the luminance
    read-out y (1: kept).

    ``readout`` is the 4x3 latent -> RGB matrix. A = I - (1 - scale) U (C^T U)^-1 C^T - (1 - luma) v (y^T v)^-1 y^T
    with U the latent directions along which chroma varies in the data (cov C), made blind to luminance (y^T U = 0),
    and v the direction along which luminance varies, made blind to chroma (C^T v = 0)."""
    y = readout @ LUMA  # (4,)
    chroma = torch.stack([torch.tensor([1.0, 0, 0], dtype=torch.float64) - LUMA,
                          torch.tensor([0, 0, 1.0], dtype=torch.float64) - LUMA], 1)  # R-Y, B-Y
    c = readout @ chroma  # (4, 2)
    u = cov @ c
    w = cov @ y
    u_blind = u - torch.outer(w, y @ u) / (y @ w)
    chroma_part = u_blind @ torch.linalg.inv(c.T @ u_blind) @ c.T
    v = w - u @ torch.linalg.solve(c.T @ u, c.T @ w)
    luma_part = torch.outer(v, y) / (y @ v)
    return torch.eye(4, dtype=torch.float64) - (1 - scale) * chroma_part - (1 - luma) * luma_part


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=Path("assets/tinyworld"))
    p.add_argument("--scale", type=float, default=0.45, help="factor on the chroma read-outs (0 < s <= 1)")
    p.add_argument("--luma-scale", type=float, default=1.0,
                   help="factor on the luminance read-out (1: kept; > 1 settles luminance earlier)")
    p.add_argument("--n-scenes", type=int, default=2000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if not 0 < args.scale <= 1:
        raise SystemExit(f"--scale must be in (0, 1], got {args.scale}")
    if not 0.25 <= args.luma_scale <= 4:
        raise SystemExit(f"--luma-scale must be in [0.25, 4], got {args.luma_scale}")

    # 1. the latent's colour read-outs and its per-pixel covariance
    preview = json.loads((args.model / "latent_preview.json").read_text())
    readout = torch.tensor(preview["matrix"], dtype=torch.float64)  # (4, 3): rgb = z @ matrix + bias
    vae = AutoencoderKL.from_pretrained(args.model / "vae").float().eval()
    cov = latent_covariance(vae, args.n_scenes)
    a = chroma_map(readout, cov, args.scale, args.luma_scale)
    a_inv = torch.linalg.inv(a)
    y = readout @ LUMA
    print("A =\n", a.numpy().round(4))
    print("luminance read-out scaled as asked:", torch.allclose(y @ a, args.luma_scale * y))
    print("latent variance before / after:", float(torch.trace(cov)), float(torch.trace(a @ cov @ a.T)))

    # 2. fold A into the VAE (latent mean rows of quant_conv; A^-1 before post_quant_conv)
    sd = {k: v.double() for k, v in vae.state_dict().items()}
    wq, bq = sd["quant_conv.weight"][:, :, 0, 0], sd["quant_conv.bias"]
    wq[:4], bq[:4] = a @ wq[:4], a @ bq[:4]
    wp = sd["post_quant_conv.weight"][:, :, 0, 0]
    sd["post_quant_conv.weight"] = (wp @ a_inv)[:, :, None, None]
    sd["quant_conv.weight"], sd["quant_conv.bias"] = wq[:, :, None, None], bq
    vae.load_state_dict({k: v.float() for k, v in sd.items()})

    # 3. fold A^-1 into the UNet's input conv and A into its output conv (v-prediction is linear in the latent)
    unet = UNet2DConditionModel.from_pretrained(args.model / "unet").float().eval()
    with torch.no_grad():
        w_in = unet.conv_in.weight.double()
        unet.conv_in.weight.copy_(torch.einsum("oikl,ij->ojkl", w_in, a_inv).float())
        w_out = unet.conv_out.weight.double()
        unet.conv_out.weight.copy_(torch.einsum("ij,jokl->iokl", a, w_out).float())
        unet.conv_out.bias.copy_((a @ unet.conv_out.bias.double()).float())

    # 4. write the folder: a copy of the model with the two parts replaced
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.model, args.out)
    for part, module in (("vae", vae), ("unet", unet)):
        shutil.rmtree(args.out / part)
        module.to(torch.float16).save_pretrained(args.out / part, safe_serialization=True)
    readout_new = a_inv.T @ readout  # rgb = (A^-1 z') @ matrix
    preview.update(matrix=readout_new.float().tolist(), note=f"chroma read-outs scaled by {args.scale}, luminance by {args.luma_scale}")
    (args.out / "latent_preview.json").write_text(json.dumps(preview, indent=2))
    (args.out / "chroma_transform.json").write_text(json.dumps(
        {"scale": args.scale, "luma_scale": args.luma_scale, "from": str(args.model), "A": a.tolist(), "n_scenes": args.n_scenes}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
