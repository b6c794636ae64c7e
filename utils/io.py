"""Atomic file writes, and paths as a reader should see them.

Caches, checkpoints and results are written to a temporary file in the destination folder and then moved into
place with :func:`os.replace`, which is atomic on POSIX and Windows. An interrupted write (the notebook's stop
button, a full disk) therefore leaves the previous version intact.

Two ways to name a file. What the notebook prints into its (committed) outputs goes through
:func:`display_path`, so that the tutorial (ANIL, Raghu et al., ICLR 2020, arXiv:1909.09157) never shows the
folders of the machine that ran it. Exceptions, warnings and messages about an interrupted run go through
:func:`error_path`: an absolute path points at the same file from whichever folder the reader runs the modules,
where a path relative to the project would mislead.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_MAX_PARENT_STEPS = 2  # "../../x" still reads as "next to the project"; deeper, the absolute path is clearer


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printed to a reader: relative to the project, ``~/...`` in the home folder, else unchanged.

    A path at most ``_MAX_PARENT_STEPS`` folders above the project (``../shared/data`` beside a clone) is shown
    relative too. Nothing is resolved on disk, so a missing path is shown just the same.

    Examples:
        ``<project>/results/S1.json`` -> ``results/S1.json``; ``/home/ann/.cache/torch`` -> ``~/.cache/torch``.
    """
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    if absolute.is_relative_to(PROJECT_ROOT):
        return absolute.relative_to(PROJECT_ROOT).as_posix() or "."
    home = Path.home()
    if absolute.is_relative_to(home):
        return "~/" + absolute.relative_to(home).as_posix()
    if absolute.anchor == PROJECT_ROOT.anchor:  # relpath fails across Windows drives
        relative = Path(os.path.relpath(absolute, PROJECT_ROOT))
        if relative.parts.count("..") <= _MAX_PARENT_STEPS:
            return relative.as_posix()
    return str(path)


def error_path(path: str | os.PathLike) -> str:
    """``path`` as an exception names it: absolute (``~`` expanded), never relative to the project.

    Nothing is resolved on disk (no symbolic links followed), so a missing path is named just the same.
    """
    return os.path.abspath(Path(path).expanduser())


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises:
        PermissionError: naming the folder, when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"Cannot write to the folder {str(folder)!r} ({err.strerror or err}). "
            "Point the cache/results/checkpoint option at a writable folder."
        ) from err
    return folder


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``writer(tmp_path)`` fills a temporary file that then replaces ``path``.

    Args:
        path: destination file.
        writer: callable that writes the complete content to the temporary path it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        # mkstemp creates owner-only files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        # Only reached with tmp still present when writer or replace failed: never leave partial files.
        tmp.unlink(missing_ok=True)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
