"""Unpacking a zip archive of checkpoints uploaded by a user, refusing anything unsafe (absolute
paths, `..`, symbolic links, other file types, zip bombs) before a byte is written.

    folder = extract_checkpoint_archive("upload.zip", uploads_dir)   # then load_trajectory(folder)
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from analysis.errors import InvalidInputError
from analysis.trajectories.checkpoints import CHECKPOINT_SUFFIXES
from analysis.utils.fileio import safe_file_name

DEFAULT_MAX_ARCHIVE_BYTES = 8 * 1024**3
DEFAULT_MAX_ARCHIVE_FILES = 2000
_ARCHIVE_SUFFIXES = (*CHECKPOINT_SUFFIXES, ".json")
# Bookkeeping that archivers add on their own; skipped rather than refused.
_ARCHIVE_NOISE = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")
_COPY_CHUNK = 1024 * 1024


def extract_checkpoint_archive(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_files: int = DEFAULT_MAX_ARCHIVE_FILES,
) -> Path:
    """Safely unpack a zip of checkpoints into a new folder inside `dest_dir`; return that folder.

    The archive's layout is kept, except that one top-level folder enclosing every member is
    stripped, so both a zipped folder of checkpoints and a zipped TrajectoryRecorder directory
    (manifest.json + snapshots/) come out ready for `load_trajectory`. The folder is named
    after the archive (with -2, -3, ... when taken).

    Refused with InvalidInputError, before anything is written: absolute paths, `..`
    components, symlinks, members other than .pt/.pth/.safetensors/.json, more than
    `max_files` members or more than `max_total_bytes` uncompressed. Extraction goes to a
    hidden temporary folder that is renamed into place only when complete; on any failure it
    is removed, so nothing half-written is left behind.
    """
    archive_path = Path(zip_path)
    destination = Path(dest_dir)
    if not archive_path.is_file():
        raise InvalidInputError(f"{archive_path}: no such archive.")
    destination.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InvalidInputError(f"{archive_path}: not a readable zip archive ({error}).") from error
    with archive:
        members = _checked_members(archive, archive_path, max_total_bytes, max_files)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-extract-", dir=destination))
        try:
            written = 0
            for info, relative in members:
                target = staging.joinpath(*relative.parts)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    sink = open(target, "xb")
                except OSError as error:
                    raise InvalidInputError(
                        f"{archive_path}: cannot unpack member {info.filename!r} ({error})."
                    ) from error
                with archive.open(info) as source, sink:
                    while chunk := source.read(_COPY_CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:  # declared sizes can lie
                            raise InvalidInputError(
                                f"{archive_path}: unpacks to more than {max_total_bytes} bytes; refused."
                            )
                        sink.write(chunk)
            return _rename_into_place(staging, destination, archive_path.stem)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error) as error:
            # RuntimeError: encrypted member; NotImplementedError: unsupported compression.
            shutil.rmtree(staging, ignore_errors=True)
            raise InvalidInputError(
                f"{archive_path}: cannot unpack (corrupt, encrypted or unsupported compression: {error})."
            ) from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _checked_members(
    archive: zipfile.ZipFile, archive_path: Path, max_total_bytes: int, max_files: int
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    total = 0
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or _ARCHIVE_NOISE.search(name):
            continue
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise InvalidInputError(f"{archive_path}: member {name!r} has an absolute path; refused.")
        relative = PurePosixPath(name.replace("\\", "/"))
        if any(part == ".." for part in relative.parts):
            raise InvalidInputError(f"{archive_path}: member {name!r} points outside the archive (..); refused.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInputError(f"{archive_path}: member {name!r} is a symbolic link; refused.")
        if relative.suffix.lower() not in _ARCHIVE_SUFFIXES:
            raise InvalidInputError(
                f"{archive_path}: member {name!r} is not a checkpoint; the archive may hold only "
                f"{', '.join(_ARCHIVE_SUFFIXES)} files."
            )
        total += info.file_size
        members.append((info, relative))
        if len(members) > max_files:
            raise InvalidInputError(f"{archive_path}: holds more than {max_files} files; refused.")
        if total > max_total_bytes:
            raise InvalidInputError(
                f"{archive_path}: unpacks to more than {max_total_bytes} bytes; refused. "
                "Upload fewer or smaller checkpoints."
            )
    if not any(relative.suffix.lower() in CHECKPOINT_SUFFIXES for _, relative in members):
        raise InvalidInputError(f"{archive_path}: holds no .pt, .pth or .safetensors files.")
    tops = {relative.parts[0] for _, relative in members}
    if len(tops) == 1 and all(len(relative.parts) > 1 for _, relative in members):
        members = [(info, PurePosixPath(*relative.parts[1:])) for info, relative in members]
    seen: set[str] = set()
    for _, relative in members:
        if str(relative) in seen:
            raise InvalidInputError(f"{archive_path}: member {str(relative)!r} appears twice; refused.")
        seen.add(str(relative))
    return members


def _rename_into_place(staging: Path, destination: Path, stem: str) -> Path:
    base = safe_file_name(stem, default="checkpoints")
    for attempt in range(1, 1000):
        target = destination / (base if attempt == 1 else f"{base}-{attempt}")
        if target.exists():
            continue
        try:
            os.rename(staging, target)
        except OSError:
            continue  # created meanwhile by someone else
        return target
    raise InvalidInputError(f"{destination}: too many folders named {base}-N; clean it up first.")
