"""Cross-attention capture: installed for the run only, the picture unchanged, maps that are probabilities."""

from __future__ import annotations

import pytest
import torch

from studio.engine import Engine, GenerationRequest, RunHooks
from studio.inspection import CrossAttentionRecorder

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REQ = GenerationRequest(prompt="a red circle", negative_prompt="", steps=3, cfg=5.0, seed=1, batch_size=2)


def recorder_for(model, req=REQ):
    side = model.default_size // model.vae_scale_factor
    return CrossAttentionRecorder(slice(req.batch_size, 2 * req.batch_size), (side, side))


def test_capture_leaves_the_picture_and_the_processors_unchanged(tiny_model):
    before = {name: type(p) for name, p in tiny_model.unet.attn_processors.items()}
    plain = Engine(tiny_model).generate(REQ).latents
    rec = recorder_for(tiny_model)
    captured = Engine(tiny_model).generate(REQ, hooks=RunHooks(**rec.hooks_kwargs())).latents
    assert torch.allclose(plain, captured, atol=1e-4)
    assert {name: type(p) for name, p in tiny_model.unet.attn_processors.items()} == before
    attn2 = [n for n in before if ".attn2." in n]
    assert len(rec.layers) == len(attn2) and rec.steps == [0, 1, 2]
    for (step, layer), m in rec.maps.items():
        assert m.shape[0] == REQ.batch_size and m.shape[-1] == tiny_model.tokenizer.model_max_length
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-4)  # softmax over the tokens


def test_processors_removed_after_an_exception(tiny_model):
    before = {name: type(p) for name, p in tiny_model.unet.attn_processors.items()}
    rec = recorder_for(tiny_model)

    def boom(event):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        Engine(tiny_model).generate(REQ, hooks=RunHooks(attention_processors=rec.processors, step_callbacks=[boom]))
    assert {name: type(p) for name, p in tiny_model.unet.attn_processors.items()} == before


def test_aggregate_shapes_and_selection(tiny_model):
    rec = recorder_for(tiny_model)
    Engine(tiny_model).generate(REQ, hooks=RunHooks(**rec.hooks_kwargs()))
    heat = rec.aggregate((64, 64))
    assert heat.shape == (REQ.batch_size, 77, 64, 64) and heat.min() >= 0
    one = rec.aggregate((64, 64), steps=[0], layers=rec.layers[:1])
    assert one.shape == heat.shape and not torch.allclose(one, heat)
    with pytest.raises(ValueError, match="no attention maps"):
        rec.aggregate((64, 64), steps=[99])
