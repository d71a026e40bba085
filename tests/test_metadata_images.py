"""PNG metadata: embedding both chunks, reading them back, error cases, provenance."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from PIL import Image, PngImagePlugin

from studio.outputs import (
    GenerationSettings, MetadataError, Provenance, build_parameters, library_versions,
    png_text_chunks, read_image_settings,
)
from studio.outputs.pngio import encode_png


def make_settings(**changes) -> GenerationSettings:
    values = dict(
        prompt="a lighthouse at dusk,\nwaves: crashing", negative_prompt="text, watermark",
        sampler="Euler a", steps=12, cfg=6.0, seed=1234, width=32, height=24,
        batch_size=2, batch_index=1, model_name="tinyworld", model_hash="abcd1234",
        workbench="controlnet",
        controls={"canny": {"weight": 0.75, "low": 100, "high": 200}, "reference": "inputs/ref.png"},
        extra={"Clip skip": "2"},
    )
    values.update(changes)
    return GenerationSettings(**values)


def make_provenance(**changes) -> Provenance:
    values = dict(model_id="hf-internal/tinyworld", weights_hash="sha256:" + "ab" * 32,
                  scheduler="EulerAncestralDiscreteScheduler", device="cuda:0", dtype="torch.float16",
                  duration_s=1.25, created=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc))
    values.update(changes)
    return Provenance.collect(**values)


def studio_png(settings: GenerationSettings, provenance: Provenance | None = None) -> bytes:
    image = Image.new("RGB", (settings.width, settings.height), (200, 40, 40))
    return encode_png(image, png_text_chunks(settings, provenance or make_provenance()))


def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_round_trip_through_png_file(tmp_path):
    settings = make_settings()
    path = tmp_path / "out.png"
    path.write_bytes(studio_png(settings))
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), Image.open(path)):
        parsed = read_image_settings(source)
        assert parsed.source == "studio"
        assert parsed.to_generation_settings() == settings


def test_png_carries_a1111_parameters_and_json_provenance(tmp_path):
    settings = make_settings()
    with Image.open(io.BytesIO(studio_png(settings))) as image:
        image.load()
        assert image.text["parameters"] == build_parameters(settings)
        chunk = json.loads(image.text["studio"])
    assert chunk["format"] == "studio.output"
    assert chunk["settings"]["controls"]["canny"]["weight"] == 0.75
    provenance = chunk["provenance"]
    assert provenance["model"] == {"id": "hf-internal/tinyworld", "weights_hash": "sha256:" + "ab" * 32}
    assert provenance["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert (provenance["device"], provenance["dtype"]) == ("cuda:0", "float16")
    assert provenance["created"] == "2024-05-01T12:00:00.000+00:00"
    assert provenance["duration_s"] == 1.25
    assert {"python", "studio", "torch", "diffusers", "pillow"} <= set(provenance["versions"])


def test_read_prefers_json_chunk_and_exposes_provenance():
    settings = make_settings()
    parsed = read_image_settings(studio_png(settings))
    assert parsed.provenance["model"]["id"] == "hf-internal/tinyworld"
    assert parsed.controls["reference"] == "inputs/ref.png"


def test_damaged_json_chunk_falls_back_to_parameters_text():
    settings = make_settings(controls={})
    data = png_with_text(parameters=build_parameters(settings), studio="{not json")
    parsed = read_image_settings(data)
    assert parsed.source == "parameters"
    assert parsed.to_generation_settings() == settings


def test_reads_a1111_png():
    text = ("a castle\nNegative prompt: fog\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
            "CFG scale: 7, Seed: 99, Size: 8x8, Model hash: 6ce0161689, Model: v1-5, Version: v1.9.4")
    parsed = read_image_settings(png_with_text(parameters=text))
    assert parsed.source == "parameters"
    assert parsed.sampler == "DPM++ 2M Karras"
    assert parsed.request_fields()["seed"] == 99


def test_text_file_is_rejected_with_accepted_formats(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Steps: 20, Sampler: Euler a")
    with pytest.raises(MetadataError, match="not an image file.*accepted: a PNG saved by the studio"):
        read_image_settings(path)


def test_truncated_png_is_rejected():
    data = studio_png(make_settings(width=64, height=64))
    with pytest.raises(MetadataError, match="truncated or corrupt"):
        read_image_settings(data[: len(data) - 40])


def test_corrupted_png_is_rejected():
    data = bytearray(studio_png(make_settings(width=64, height=64)))
    data[-30] ^= 0xFF  # inside the last chunks: CRC mismatch
    with pytest.raises(MetadataError, match="truncated or corrupt"):
        read_image_settings(bytes(data))


def test_png_without_metadata_is_rejected():
    with pytest.raises(MetadataError, match="no generation metadata.*'parameters'"):
        read_image_settings(png_with_text(Comment="hello"))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(MetadataError, match="not found"):
        read_image_settings(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="expected a file path"):
        read_image_settings(12345)  # type: ignore[arg-type]


def test_encode_rejects_unsupported_mode_and_huge_controls():
    settings = make_settings()
    with pytest.raises(ValueError, match="convert it first"):
        encode_png(Image.new("CMYK", (4, 4)), png_text_chunks(settings, make_provenance()))
    huge = make_settings(controls={"image": "x" * 1_100_000})
    with pytest.raises(ValueError, match="store references, not image data"):
        studio_png(huge)


def test_provenance_validation_and_versions():
    versions = library_versions()
    assert versions["python"].count(".") == 2 and "studio" in versions
    with pytest.raises(ValueError, match="duration_s"):
        make_provenance(duration_s=-1)
    with pytest.raises(ValueError, match="model_id"):
        make_provenance(model_id="")
    with pytest.raises(ValueError, match="ISO-8601"):
        Provenance(model_id="m", created="yesterday")
