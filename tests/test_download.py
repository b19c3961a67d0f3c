"""Tests for analysis.lm.download against a local HTTP server; the internet is never contacted."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

import analysis.lm.download as download
from analysis.errors import DynapruneError, InvalidInputError
from analysis.lm.corpora import load_corpus
from analysis.lm.download import (
    ChecksumMismatchError,
    DownloadError,
    download_ptb,
    download_verified,
    ptb_files_verified,
)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def served(tmp_path):
    """(directory served, base URL) of an HTTP server on 127.0.0.1 with a free port."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_good_file_downloads_and_verifies(served, tmp_path):
    root, base = served
    payload = os.urandom(200_000)
    (root / "good.bin").write_bytes(payload)
    dest = tmp_path / "out" / "good.bin"
    assert download_verified(base + "good.bin", dest, sha(payload)) == dest
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.bin"]


def test_corrupted_file_is_rejected_and_leaves_nothing(served, tmp_path):
    root, base = served
    (root / "data.txt").write_bytes(b"corrupted contents\n")
    dest = tmp_path / "out" / "data.txt"
    with pytest.raises(ChecksumMismatchError, match="expected " + sha(b"original contents\n")):
        download_verified(base + "data.txt", dest, sha(b"original contents\n"))
    assert list(dest.parent.iterdir()) == []


def test_mismatch_does_not_touch_an_existing_file(served, tmp_path):
    root, base = served
    (root / "data.txt").write_bytes(b"new but wrong\n")
    dest = tmp_path / "data.txt"
    dest.write_bytes(b"old\n")
    with pytest.raises(ChecksumMismatchError):
        download_verified(base + "data.txt", dest, sha(b"expected\n"))
    assert dest.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_dir()) == ["data.txt"]


def test_missing_file_gives_a_clear_error(served, tmp_path):
    _, base = served
    dest = tmp_path / "out" / "absent.txt"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_verified(base + "absent.txt", dest, sha(b""))
    assert list(dest.parent.iterdir()) == []


def test_connection_refused_gives_a_clear_error(tmp_path):
    with socket.socket() as probe:                     # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = tmp_path / "x.txt"
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}.*failed"):
        download_verified(f"http://127.0.0.1:{port}/x.txt", dest, sha(b""), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_other_schemes_and_bad_checksums_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("local file")
    for url in (secret.as_uri(), "ftp://127.0.0.1/x.txt", "data:text/plain,hello"):
        with pytest.raises(DownloadError, match="only http and https"):
            download_verified(url, tmp_path / "copy.txt", sha(b"local file"))
    with pytest.raises(InvalidInputError, match="64 hex digits"):
        download_verified("http://127.0.0.1/x", tmp_path / "copy.txt", "abc")
    assert not (tmp_path / "copy.txt").exists()


def test_size_limit_stops_the_download(served, tmp_path):
    root, base = served
    payload = b"x" * 10_000
    (root / "big.bin").write_bytes(payload)
    with pytest.raises(DownloadError, match="limit"):
        download_verified(base + "big.bin", tmp_path / "out" / "big.bin", sha(payload), max_bytes=1000)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_ptb_rejects_files_that_are_not_the_published_ones(served, tmp_path):
    root, base = served
    for name in download.PTB_SHA256:
        (root / name).write_text(" fake corpus \n")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError):
        download_ptb(cache, base_url=base)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert issubclass(ChecksumMismatchError, DynapruneError)


def test_download_ptb_fetches_verified_files_and_load_corpus_uses_them(served, ptb_dir, tmp_path, monkeypatch):
    root, base = served
    for name in download.PTB_SHA256:
        (root / name).write_bytes((ptb_dir / name).read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.delenv("DYNAPRUNE_PTB_DIR")
    monkeypatch.setattr(download, "PTB_BASE_URL", base)
    corpus = load_corpus("ptb", cache_dir=cache, download=True)
    assert ptb_files_verified(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(download.PTB_SHA256)
    assert corpus.valid.numel() == 73760
    # a second call finds the verified copy and does not download again
    for name in download.PTB_SHA256:
        (root / name).unlink()
    assert download_ptb(cache, base_url=base) == cache
    assert load_corpus("ptb", cache_dir=cache).test.numel() == 82430


def test_download_command_refuses_a_corrupted_mirror_and_leaves_nothing(served, tmp_path, capsys):
    from analysis.cli import main

    root, base = served
    for name in download.PTB_SHA256:
        (root / name).write_text("not the treebank\n")
    target = tmp_path / "ptb"
    assert main(["download-ptb", "--to", str(target), "--mirror", base]) == 2
    assert "has SHA-256" in capsys.readouterr().err
    assert not target.exists() or list(target.iterdir()) == []


def test_download_command_fetches_a_verified_copy(served, ptb_dir, tmp_path, capsys):
    from analysis.cli import main

    root, base = served
    for name in download.PTB_SHA256:
        (root / name).write_bytes((ptb_dir / name).read_bytes())
    target = tmp_path / "ptb"
    assert main(["download-ptb", "--to", str(target), "--mirror", base]) == 0
    assert ptb_files_verified(target)
    assert f"--data ptb:{target}" in capsys.readouterr().out


@pytest.fixture
def small_treebank(served, monkeypatch):
    """Three small generated files served as the Penn Treebank, with the library's expected sums and
    sizes pointed at them (in this process only): (served directory, base URL, {name: bytes})."""
    root, base = served
    contents = {name: os.urandom(size) for name, size in zip(download.PTB_SHA256, (150_000, 20_000, 70_000))}
    for name, data in contents.items():
        (root / name).write_bytes(data)
    monkeypatch.setattr(download, "PTB_SHA256", {name: sha(data) for name, data in contents.items()})
    monkeypatch.setattr(download, "PTB_BYTES", {name: len(data) for name, data in contents.items()})
    return root, base, contents


def test_download_verified_reports_the_bytes_received(served, tmp_path):
    root, base = served
    payload = os.urandom(200_000)
    (root / "good.bin").write_bytes(payload)
    heard = []
    download_verified(base + "good.bin", tmp_path / "good.bin", sha(payload), progress=heard.append)
    assert len(heard) >= 3 and all(u.task == "good.bin" and u.total == len(payload) for u in heard)
    assert [u.done for u in heard] == sorted(u.done for u in heard) and heard[-1].done == len(payload)
    assert heard[-1].overall == 1.0 and 0 < heard[0].overall < 1


def test_download_ptb_reports_progress_over_all_three_files(small_treebank, tmp_path):
    _, base, contents = small_treebank
    total = sum(map(len, contents.values()))
    heard = []
    download_ptb(tmp_path / "cache", base_url=base, progress=heard.append)
    assert all(u.task == "Penn Treebank" and u.total == total for u in heard)
    done = [u.done for u in heard]
    assert done == sorted(done) and done[-1] == total and heard[-1].overall == 1.0
    assert any(0 < u.overall < len(contents["ptb.train.txt"]) / total for u in heard)  # inside the first file
    details = [u.detail for u in heard]
    assert details == sorted(details, key=list(contents).index) and set(details) == set(contents)  # in order
    # already verified files count as done, without a download
    for name in contents:
        (small_treebank[0] / name).unlink()
    again = []
    download_ptb(tmp_path / "cache", base_url=base, progress=again.append)
    assert [u.done for u in again] == [150_000, 170_000, total]


def test_download_ptb_offline_fails_in_one_line_and_writes_nothing(tmp_path):
    with socket.socket() as probe:                     # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    heard = []
    with pytest.raises(DownloadError) as caught:
        download_ptb(tmp_path / "cache", base_url=f"http://127.0.0.1:{port}/", timeout=5, progress=heard.append)
    assert "\n" not in str(caught.value) and "check the address and the network" in str(caught.value)
    assert caught.value.__suppress_context__  # the urllib error behind it is not chained on
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
    assert heard == []


def test_a_corrupt_file_after_a_good_one_keeps_only_the_verified_one(small_treebank, tmp_path):
    root, base, contents = small_treebank
    (root / "ptb.valid.txt").write_bytes(b"corrupted")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError):
        download_ptb(cache, base_url=base)
    assert sorted(p.name for p in cache.iterdir()) == ["ptb.train.txt"]  # verified; no temporary file left
    assert (cache / "ptb.train.txt").read_bytes() == contents["ptb.train.txt"]


def test_the_operator_sets_the_mirror_in_the_environment(small_treebank, tmp_path, monkeypatch):
    _, base, contents = small_treebank
    monkeypatch.setattr(download, "PTB_BASE_URL", "http://127.0.0.1:9/never-used/")
    monkeypatch.setenv(download.PTB_URL_ENV_VAR, base)
    assert download.ptb_base_url() == base
    assert download_ptb(tmp_path / "cache") == tmp_path / "cache"
    assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == contents
    monkeypatch.setenv(download.PTB_URL_ENV_VAR, "  ")
    assert download.ptb_base_url() == "http://127.0.0.1:9/never-used/"  # blank: the default


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1/ptb/", "file:///etc/", "javascript:alert(1)", "http://", "/srv/ptb",
                                 "http://127.0.0.1/ptb/?x=1", "http://127.0.0.1/p tb/", "http://127.0.0.1/ptb/#top",
                                 "http://[::1/ptb/", "http://127.0.0.1/\x1b[2J"])
def test_a_mirror_setting_that_is_not_an_http_folder_is_refused_before_any_request(bad, tmp_path, monkeypatch):
    monkeypatch.setenv(download.PTB_URL_ENV_VAR, bad)
    with pytest.raises(InvalidInputError, match=download.PTB_URL_ENV_VAR):
        download_ptb(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_published_sizes_are_those_of_the_published_files(ptb_dir):
    assert {name: (ptb_dir / name).stat().st_size for name in download.PTB_BYTES} == download.PTB_BYTES
    assert set(download.PTB_BYTES) == set(download.PTB_SHA256)
