"""SQLite history: add/get/list, filters, reopen, thread safety, reconcile."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from studio.outputs import GenerationSettings, History, HistoryError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def make_settings(**changes) -> GenerationSettings:
    values = dict(prompt="a cat", sampler="Euler a", steps=10, cfg=7.0, seed=1,
                  width=64, height=64, model_name="tinyworld")
    values.update(changes)
    return GenerationSettings(**values)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"png")
    return path


@pytest.fixture
def history(tmp_path):
    with History(tmp_path / "history.sqlite3") as opened:
        yield opened


def add_samples(history, root):
    rows = [
        ("a red fox, winter", "tinyworld", "txt2img"),
        ("a blue fox at night", "tinyworld", "controlnet"),
        ("portrait of a sailor", "sd15", "txt2img"),
        ("100% cotton_shirt", "sd15", "img2img"),
    ]
    for i, (prompt, model, workbench) in enumerate(rows):
        history.add(touch(root / f"2024-05-01/{i:05d}-{i}.png"),
                    make_settings(prompt=prompt, model_name=model, workbench=workbench, seed=i),
                    created=T0 + timedelta(minutes=i))


def test_add_get_and_settings_json(history, tmp_path):
    settings = make_settings(controls={"canny": {"weight": 0.5}}, seed=2**64 - 1)
    record = history.add(touch(tmp_path / "2024-05-01/00001-7.png"), settings, created=T0)
    assert record.relative_path == "2024-05-01/00001-7.png"
    assert record.path == tmp_path / "2024-05-01/00001-7.png"
    assert record.created == "2024-05-01T12:00:00.000+00:00"
    assert record.seed == 2**64 - 1
    assert history.get(record.id) == record
    assert record.settings() == settings
    assert json.loads(record.settings_json)["controls"] == {"canny": {"weight": 0.5}}
    assert history.get(record.id + 100) is None


def test_add_is_idempotent_per_path(history, tmp_path):
    path = touch(tmp_path / "2024-05-01/00001-1.png")
    first = history.add(path, make_settings(), created=T0)
    again = history.add(path, make_settings(prompt="other"), created=T0)
    assert again == first and history.count() == 1


def test_list_newest_first_paging_and_filters(history, tmp_path):
    add_samples(history, tmp_path)
    assert [r.seed for r in history.list()] == [3, 2, 1, 0]
    assert [r.seed for r in history.list(limit=2, offset=1)] == [2, 1]
    assert [r.seed for r in history.list(text="FOX")] == [1, 0]
    assert [r.seed for r in history.list(text="100%")] == [3]  # LIKE wildcards are escaped
    assert history.list(text="cotton%shirt") == []
    assert [r.seed for r in history.list(model="sd15")] == [3, 2]
    assert [r.seed for r in history.list(workbench="txt2img")] == [2, 0]
    assert [r.seed for r in history.list(text="fox", model="tinyworld", workbench="controlnet")] == [1]
    assert history.count(model="tinyworld") == 2
    assert history.models() == ["sd15", "tinyworld"]


@pytest.mark.parametrize("kwargs, error", [
    ({"limit": 0}, ValueError), ({"limit": 5000}, ValueError), ({"offset": -1}, ValueError),
    ({"limit": "10"}, TypeError), ({"model": 3}, TypeError),
])
def test_list_validates_arguments(history, kwargs, error):
    with pytest.raises(error):
        history.list(**kwargs)


def test_survives_reopen(tmp_path):
    db = tmp_path / "history.sqlite3"
    with History(db) as history:
        add_samples(history, tmp_path)
        assert history.journal_mode == "wal"
    with History(db) as reopened:
        assert [r.prompt for r in reopened.list(limit=1)] == ["100% cotton_shirt"]
        assert reopened.count() == 4


def test_thread_safe_adds(history, tmp_path):
    def worker(n):
        for i in range(25):
            history.add(touch(tmp_path / f"d/{n}-{i}.png"), make_settings(seed=i), created=T0)
            history.list(limit=5)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert history.count() == 100


def test_reconcile_drops_rows_of_missing_files_and_stale_temps(history, tmp_path):
    add_samples(history, tmp_path)
    (tmp_path / "2024-05-01/00001-1.png").unlink()
    dead_temp = touch(tmp_path / "2024-05-01/.studio-999999999-00ff.png.tmp")
    live_temp = touch(tmp_path / f"2024-05-01/.studio-{os.getpid()}-00aa.png.tmp")
    report = history.reconcile()
    assert report.dropped_rows and history.count() == 3
    assert all(r.path.is_file() for r in history.list())
    assert report.removed_temp_files == (dead_temp,)
    assert live_temp.exists()  # its writer (this process) is alive
    assert history.reconcile(temp_max_age_s=-1).removed_temp_files == (live_temp,)


def test_corrupt_database_gives_helpful_error(tmp_path):
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="move it aside"):
        History(db)
