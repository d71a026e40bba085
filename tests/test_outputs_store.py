"""OutputStore: atomic save, naming, threads, reconcile of orphans and temp files."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from PIL import Image

from studio.outputs import (
    GenerationSettings, History, OutputStore, Provenance, StoreError, read_image_settings,
)
from studio.outputs import store as store_module

NOON = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
DAY = f"{NOON.astimezone():%Y-%m-%d}"  # day folders use the local date


def make_settings(**changes) -> GenerationSettings:
    values = dict(prompt="a cat", negative_prompt="dog", sampler="DPM++ 2M Karras", steps=10, cfg=7.0,
                  seed=42, width=16, height=16, model_name="tinyworld", model_hash="abcd1234",
                  controls={"canny": {"weight": 1.0}})
    values.update(changes)
    return GenerationSettings(**values)


def provenance() -> Provenance:
    return Provenance.collect(model_id="tinyworld", weights_hash="ff" * 32, device="cpu",
                              dtype="float32", duration_s=0.5, created=NOON)


def image() -> Image.Image:
    return Image.new("RGB", (16, 16), (10, 200, 30))


@pytest.fixture
def store(tmp_path):
    with OutputStore(tmp_path / "out", clock=lambda: NOON) as opened:
        yield opened


def test_save_writes_png_with_metadata_and_row(store):
    saved = store.save(image(), make_settings(), provenance())
    assert saved.relative_path == f"{DAY}/00001-42.png"
    assert saved.path.is_file()
    parsed = read_image_settings(saved.path)
    assert parsed.to_generation_settings() == make_settings()
    assert parsed.provenance["model"]["weights_hash"] == "ff" * 32
    record = store.get(saved.id)
    assert record is not None and record.path == saved.path and record.settings() == make_settings()
    assert not list(store.root.rglob("*.tmp"))


def test_created_defaults_to_save_time_and_mapping_provenance_is_accepted(store):
    saved = store.save(image(), make_settings(), {"device": "cpu", "note": "mapping"})
    assert saved.created == "2024-05-01T12:00:00.000+00:00"
    assert read_image_settings(saved.path).provenance["note"] == "mapping"


def test_counter_increments_and_never_reuses_names(store):
    first = store.save(image(), make_settings(seed=1), provenance())
    second = store.save(image(), make_settings(seed=2), provenance())
    assert (first.path.name, second.path.name) == ("00001-1.png", "00002-2.png")
    second.path.unlink()
    third = store.save(image(), make_settings(seed=3), provenance())
    assert third.path.name == "00003-3.png"  # the .counter file remembers 2


def test_threads_saving_at_once_get_distinct_files(store):
    saved = []

    def worker(n):
        for i in range(5):
            saved.append(store.save(image(), make_settings(seed=n * 100 + i), provenance()))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({s.path for s in saved}) == 20 == store.history.count()
    for output in saved:
        assert read_image_settings(output.path).seed == output.settings.seed


def test_survives_reopen(tmp_path):
    root = tmp_path / "out"
    with OutputStore(root) as store:
        saved = store.save(image(), make_settings(), provenance())
    with OutputStore(root) as reopened:
        assert [r.id for r in reopened.list()] == [saved.id]
        assert reopened.last_reconcile.changed is False
        assert reopened.save(image(), make_settings(), provenance()).path.name == "00002-42.png"


def test_failed_row_insert_leaves_file_that_reconcile_reindexes(tmp_path, monkeypatch):
    root = tmp_path / "out"
    with OutputStore(root) as store:
        def broken_add(*args, **kwargs):
            raise store_module.HistoryError("disk I/O error")

        monkeypatch.setattr(store.history, "add", broken_add)
        with pytest.raises(StoreError, match="reconcile"):
            store.save(image(), make_settings(prompt="orphan"), provenance())
    with OutputStore(root) as reopened:
        report = reopened.last_reconcile
        assert len(report.reindexed) == 1
        [record] = reopened.list()
        assert record.prompt == "orphan" and record.path == report.reindexed[0]
        assert record.settings() == make_settings(prompt="orphan")


def test_reconcile_skips_foreign_pngs_and_removes_dead_temps(tmp_path):
    root = tmp_path / "out"
    day = root / DAY
    day.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(day / "00007-1.png")  # no studio chunk
    (day / ".studio-999999999-abcd.png.tmp").write_bytes(b"\x89PNG half")
    with OutputStore(root, clock=lambda: NOON) as store:
        assert store.last_reconcile.skipped == (day / "00007-1.png",)
        assert [p.name for p in store.last_reconcile.removed_temp_files] == [".studio-999999999-abcd.png.tmp"]
        assert store.history.count() == 0
        assert store.save(image(), make_settings(), provenance()).path.name.startswith("00008-")


def test_encoding_errors_touch_nothing(store):
    with pytest.raises(ValueError, match="convert it first"):
        store.save(Image.new("CMYK", (4, 4)), make_settings(), provenance())
    with pytest.raises(TypeError, match="GenerationSettings"):
        store.save(image(), {"prompt": "x"}, provenance())  # type: ignore[arg-type]
    assert not [p for p in store.root.rglob("*") if p.suffix in {".png", ".tmp"}]
    assert store.history.count() == 0


def test_external_history_is_not_closed(tmp_path):
    history = History(tmp_path / "elsewhere.sqlite3", files_root=tmp_path / "out")
    with OutputStore(tmp_path / "out", history=history) as store:
        store.save(image(), make_settings(), provenance())
    assert history.count() == 1
    history.close()
