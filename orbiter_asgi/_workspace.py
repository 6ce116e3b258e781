"""Read-only access to an agent's workspace directory that never leaves it."""

from __future__ import annotations

import mimetypes
import os
from datetime import UTC, datetime
from pathlib import Path

from .exceptions import NotFoundError
from .models import WorkspaceFile

__all__ = ["list_files", "resolve_file"]


def _inside(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_file(workspace: Path, relative: str) -> Path:
    """The real file `relative` names inside `workspace`, or `NotFoundError`.

    `..` segments, absolute paths, NUL bytes and symlinks that lead outside
    the workspace are all simply "not found", so probing reveals nothing.
    """
    not_found = NotFoundError(f"File {relative!r} not found in the workspace")
    parts = relative.replace("\\", "/").split("/")
    if "\x00" in relative or relative.startswith("/") or any(p in ("..", "") for p in parts):
        raise not_found
    root = workspace.resolve()
    try:
        target = root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        raise not_found from None
    if not _inside(root, target) or not target.is_file():
        raise not_found
    return target


def _is_text(name: str) -> bool:
    media_type, _ = mimetypes.guess_type(name)
    return media_type is None or media_type.startswith("text/") or media_type.endswith(("json", "xml"))


def list_files(workspace: Path) -> list[WorkspaceFile]:
    """Every regular file under `workspace`, sorted by path."""
    root = workspace.resolve()
    if not root.is_dir():
        return []
    files: list[WorkspaceFile] = []
    for directory, subdirectories, names in os.walk(root):
        here = Path(directory)
        subdirectories[:] = [d for d in subdirectories if not (here / d).is_symlink()]
        for name in names:
            path = here / name
            try:
                real = path.resolve(strict=True)
                if not _inside(root, real) or not real.is_file():
                    continue
                stat = real.stat()
            except (OSError, RuntimeError):
                continue
            relative = path.relative_to(root).as_posix()
            files.append(
                WorkspaceFile(
                    name=relative,
                    path=relative,
                    size=stat.st_size,
                    modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
                    artifact_type="text" if _is_text(name) else "binary",
                )
            )
    files.sort(key=lambda f: f.path)
    return files
