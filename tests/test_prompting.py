"""The prompt language: parser, schedules, weighted encoding, and how the engine runs composed prompts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from studio.engine import ComposableCFG, Engine, GenerationRequest, InvalidRequest, RunHooks
from studio.engine.conditioning import encode_chunks, encode_texts, plan_prompts
from studio.prompting import Alternate, Edit, PromptSyntaxError, Text, Weighted, parse, plain_text, schedule
from tests.test_engine import ThreeWayGuidance, unet_calls

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def steps_of(text: str, n: int = 4, part: int = 0):
    return [plain_text(c) for c in schedule(parse(text).parts[part], n)]


# ------------------------------------------------------------------------------ parser


def test_and_parts_with_weights_and_not():
    p = parse("a red circle :1.2 AND a blue square AND NOT green :0.5")
    assert [(part.text, part.weight) for part in p.parts] == [
        ("a red circle", 1.2), ("a blue square", 1.0), ("green", -0.5)]
    assert p.is_composed and not p.is_plain
    assert parse("a circle:-1").parts[0].weight == -1.0
    assert parse("a circle AND NOT red").parts[1].weight == -1.0


def test_emphasis_nodes_and_weights():
    p = parse("a (red:1.3) ((big)) [blue] circle").parts[0]
    assert p.nodes[1] == Weighted((Text("red"),), 1.3)
    assert p.nodes[3] == Weighted((Weighted((Text("big"),), 1.1),), 1.1)
    assert p.nodes[5] == Weighted((Text("blue"),), 1 / 1.1)
    weights = dict(schedule(p, 1)[0])
    assert weights["red"] == 1.3 and weights["big"] == pytest.approx(1.21) and weights["blue"] == pytest.approx(1 / 1.1)


def test_prompt_editing_by_fraction_and_by_step():
    assert steps_of("[a red circle:a blue circle:0.5]") == ["a red circle"] * 2 + ["a blue circle"] * 2
    assert steps_of("a [red:blue:3] circle") == ["a red circle"] * 3 + ["a blue circle"]
    assert steps_of("a [red:0.25] circle") == ["a  circle"] + ["a red circle"] * 3   # added at 1/4
    assert steps_of("a [red::2] circle") == ["a red circle"] * 2 + ["a  circle"] * 2  # removed at step 2
    assert isinstance(parse("[a:b:0.5]").parts[0].nodes[0], Edit)


def test_alternation_cycles_per_step():
    assert isinstance(parse("[a|b|c]").parts[0].nodes[0], Alternate)
    assert steps_of("a [red|blue|green] circle", 5) == [
        "a red circle", "a blue circle", "a green circle", "a red circle", "a blue circle"]


def test_escapes_and_text_that_only_looks_like_syntax():
    assert steps_of(r"a \(literal\) \[x\] a\:b \| c", 1) == ["a (literal) [x] a:b | c"]
    assert parse("a 16:9 picture").is_plain and steps_of("ratio 16:9", 1) == ["ratio 16:9"]
    assert parse("ANDROID and NOTEBOOK").is_plain  # keywords only as whole capital words


@pytest.mark.parametrize("text, column, words", [
    ("a (red circle", 3, "never closed"),
    ("a red] circle", 6, "closes nothing"),
    ("[a:b:c]", 6, "expected when"),
    ("(red:x)", 6, "emphasis weight"),
    ("a red circle AND", 17, "empty"),
    ("AND b", 1, "empty"),
    ("[a|b", 1, "never closed"),
    ("a | b", 3, "only separates options"),
    ("[a:b:1.5]", 6, "must be whole"),
    ("[a:b:0]", 6, "must be > 0"),
    ("a \\", 3, "backslash"),
])
def test_syntax_errors_point_at_the_column(text, column, words):
    with pytest.raises(PromptSyntaxError) as info:
        parse(text)
    assert info.value.column == column and words in str(info.value)
    assert info.value.field == "prompt" and isinstance(info.value, InvalidRequest)
    assert info.value.pointer.splitlines() == [text, " " * (column - 1) + "^"]  # the caret under the column
    assert "\n" not in str(info.value)  # one line for the CLI and the status bar


PLAIN_ALPHABET = st.characters(blacklist_characters="()[]:|\\", blacklist_categories=("Cs",))


@settings(max_examples=300, deadline=None)
@given(st.text(PLAIN_ALPHABET, max_size=60))
def test_plain_prompts_mean_what_they_meant(text):
    """Any text without brackets, colons, bars, backslashes or the AND/NOT keywords is one plain chunk of itself."""
    words = text.split()
    if "AND" in words or (words and words[0] == "NOT"):
        return
    p = parse(text)
    assert p.is_plain and len(p.parts) == 1 and p.parts[0].weight == 1.0
    assert schedule(p.parts[0], 3) == (((text, 1.0),),) * 3


# ------------------------------------------------------------------------------ encoding


def test_plain_and_unit_weight_prompts_encode_exactly_as_before(tiny_model):
    tok, enc = tiny_model.tokenizer, tiny_model.text_encoder
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    before = enc(ids)[0]
    plain = plan_prompts({"cond": "a red circle"}, 1).steps["cond"][0]
    unit = plan_prompts({"cond": "a (red:1) circle"}, 1).steps["cond"][0]
    assert plain == unit == (("a red circle", 1.0),)
    assert torch.equal(encode_chunks(tiny_model, [plain])[plain], before)


def test_emphasis_scales_exactly_its_tokens(tiny_model):
    chunks = plan_prompts({"cond": "a (red:1.5) circle"}, 1).steps["cond"][0]
    plain = (("a red circle", 1.0),)
    table = encode_chunks(tiny_model, [chunks, plain])
    weighted, base = table[chunks][0], table[plain][0]
    # chunk-wise tokenization gives the plain text's tokens, so only the weighting differs; "red" is 3 char
    # tokens at positions 2..4 in the tiny byte tokenizer (start, "a", then r, e, d)
    assert torch.allclose(weighted[2:5], base[2:5] * 1.5)
    assert torch.equal(weighted[:2], base[:2]) and torch.equal(weighted[5:], base[5:])


def test_encode_texts_rejects_schedules(tiny_model):
    assert encode_texts(tiny_model, ["a red circle", "(a) blue circle"]).shape[0] == 2
    with pytest.raises(InvalidRequest, match="prompt editing"):
        encode_texts(tiny_model, ["[a:b:0.5]"])


# ------------------------------------------------------------------------------ combiner and engine


def test_composable_combiner_matches_hand_computation():
    u, a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), torch.tensor([0.0, 5.0])
    out = ComposableCFG({"cond": 1.2, "cond:1": -0.5}).combine(0, {"uncond": u, "cond": a, "cond:1": b}, cfg=2.0)
    # u + 2 * (1.2 * (a - u) - 0.5 * (b - u)) = [1 + 2*(2.4 + 0.5), 2 + 2*(-2.4 - 1.5)]
    assert torch.allclose(out, torch.tensor([6.8, -5.8]))


REQ = GenerationRequest(prompt="a red circle", negative_prompt="", steps=4, cfg=5.0, seed=1)


def run(model, **change):
    return Engine(model).generate(GenerationRequest(**{**REQ.__dict__, **change})).latents


def test_and_parts_run_in_one_batched_unet_call_per_step(tiny_model):
    events = []
    with unet_calls(tiny_model.unet) as calls:
        Engine(tiny_model).generate(
            GenerationRequest(**{**REQ.__dict__, "prompt": "a red circle AND a blue square AND NOT green",
                                 "batch_size": 2}), on_step=events.append)
    assert calls == [4 * 2] * REQ.steps  # uncond + 3 parts, batch 2
    assert set(events[0].eps) == {"uncond", "cond", "cond:1", "cond:2"}


def test_single_part_weight_one_is_plain_cfg_and_weight_scales_guidance(tiny_model):
    plain = run(tiny_model)
    assert torch.equal(run(tiny_model, prompt="a red circle :1"), plain)
    assert torch.allclose(run(tiny_model, prompt="a red circle :2", cfg=2.5), run(tiny_model, cfg=5.0), atol=1e-5)


def test_prompt_edit_switches_the_conditioning_mid_run(tiny_model):
    red, blue = run(tiny_model), run(tiny_model, prompt="a blue circle")
    assert torch.equal(run(tiny_model, prompt="[a red circle:a blue circle:4]"), red)  # never switches in 4 steps
    assert torch.equal(run(tiny_model, prompt="[a red circle:a blue circle:0.01]"), blue)  # switches at step 0
    mixed = run(tiny_model, prompt="[a red circle:a blue circle:0.5]")
    assert not torch.equal(mixed, red) and not torch.equal(mixed, blue)


def test_language_errors_are_request_errors_with_the_field(tiny_model):
    engine = Engine(tiny_model)
    with pytest.raises(PromptSyntaxError) as info:
        engine.validate(GenerationRequest(prompt="a (red circle"))
    assert info.value.field == "prompt"
    with pytest.raises(PromptSyntaxError) as info:
        engine.validate(GenerationRequest(prompt="x", negative_prompt="blurry AND dark"))
    assert info.value.field == "negative_prompt" and "AND is not allowed here" in str(info.value)
    with pytest.raises(InvalidRequest, match="remove AND"):
        engine.validate(GenerationRequest(prompt="a AND b"), RunHooks(guidance=ThreeWayGuidance()))
    assert engine.validate(GenerationRequest(prompt="x", negative_prompt="(blurry:1.4)")) == []
