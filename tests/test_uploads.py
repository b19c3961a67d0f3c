"""Clean-up of old dashboard uploads: stale session folders go, recent ones and those a job still
needs stay, and nothing outside the uploads folder is ever touched."""
from __future__ import annotations

import os

import pytest

from analysis.errors import InvalidInputError
from analysis.uploads import remove_stale_uploads, retention_seconds, uploads_root

DAY = 86400.0


def make_session(root, name, age_days, now):
    folder = root / name / "run"
    folder.mkdir(parents=True)
    (folder / "ckpt_1.pt").write_bytes(b"x")
    stamp = now - age_days * DAY
    for path in (folder / "ckpt_1.pt", folder, folder.parent):
        os.utime(path, (stamp, stamp))
    return folder.parent


def test_only_stale_unused_session_folders_are_removed(tmp_path):
    home, now = tmp_path / "home", 1_000_000_000.0
    root = uploads_root(home)
    old = make_session(root, "old", 10, now)
    recent = make_session(root, "recent", 1, now)
    needed = make_session(root, "needed", 30, now)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.pt").write_bytes(b"y")
    os.utime(outside, (now - 100 * DAY, now - 100 * DAY))
    (root / "link").symlink_to(outside, target_is_directory=True)

    removed = remove_stale_uploads(home, max_age_s=7 * DAY, now=now, in_use=[needed / "run"])
    assert removed == [old]
    assert not old.exists() and recent.is_dir() and needed.is_dir()
    assert (outside / "keep.pt").is_file() and (root / "link").is_symlink()


def test_a_recent_file_deep_inside_keeps_its_session(tmp_path):
    home, now = tmp_path / "home", 1_000_000_000.0
    session = make_session(uploads_root(home), "s", 10, now)
    (session / "run" / "ckpt_2.pt").write_bytes(b"z")  # written now
    assert remove_stale_uploads(home, max_age_s=7 * DAY, in_use=[]) == []
    assert session.is_dir()


def test_unfinished_jobs_keep_the_uploads_they_read(tmp_path, monkeypatch):
    import analysis.uploads as uploads

    home, now = tmp_path / "home", 1_000_000_000.0
    session = make_session(uploads_root(home), "s", 10, now)
    job = type("Job", (), {"state": "failed", "cwd": str(tmp_path), "args": ["prune", "--from", str(session / "run")]})
    monkeypatch.setattr(uploads, "list_jobs", lambda home=None: [job])
    assert remove_stale_uploads(home, max_age_s=DAY, now=now) == []
    job.state = "succeeded"
    assert remove_stale_uploads(home, max_age_s=DAY, now=now) == [session]


def test_the_retention_setting(monkeypatch):
    monkeypatch.delenv("DYNAPRUNE_UPLOAD_RETENTION_DAYS", raising=False)
    assert retention_seconds() == 7 * DAY
    assert retention_seconds("0") is None and retention_seconds("1.5") == 1.5 * DAY
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(InvalidInputError, match="RETENTION"):
            retention_seconds(bad)
