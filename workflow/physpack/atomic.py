"""Outputs that appear complete or not at all.

Every file or directory a stage writes goes first to a hidden temporary sibling
(``.<name>.tmp-<pid>``) and is renamed onto its final path only when the stage has
written all of its outputs, so an interrupted or failed stage leaves nothing that
looks finished, and an older output stays as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self


def temporary_sibling(final: str | os.PathLike) -> Path:
    """The hidden temporary path next to ``final`` that this process writes to."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``; an existing ``dst`` is replaced only after
    ``src`` is complete (old one moved aside first, removed last)."""
    backup = None
    if dst.exists():
        backup = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, backup)
    os.replace(src, dst)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class StagedOutputs:
    """Temporary siblings of a set of outputs, renamed into place together.

    Use as a context manager: :meth:`file`/:meth:`directory` hand out temporary
    paths; a clean exit renames every one onto its final path (directories via
    :func:`replace_dir`), an exception removes them all and leaves
    the final paths untouched.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def _tmp(self, final: str | os.PathLike) -> tuple[Path, Path]:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(final)
        self._remove(tmp)
        self._staged.append((tmp, final))
        return tmp, final

    def file(self, final: str | os.PathLike) -> Path:
        """A temporary path to write ``final``'s content to."""
        return self._tmp(final)[0]

    def directory(self, final: str | os.PathLike) -> Path:
        """A fresh temporary directory to fill in place of ``final``."""
        tmp = self._tmp(final)[0]
        tmp.mkdir()
        return tmp

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            for tmp, _ in self._staged:
                self._remove(tmp)
            return
        for tmp, final in self._staged:
            if tmp.is_dir():
                replace_dir(tmp, final)
            else:
                os.replace(tmp, final)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling, fsync and rename: after a
    crash at any point ``path`` holds either its old content or all of ``data``."""
    path = Path(path)
    with StagedOutputs() as staged, open(staged.file(path), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path
