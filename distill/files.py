"""All-or-nothing writes: the one temp-then-rename helper every writer uses.

A file or folder is built under a temporary name beside its target and renamed onto it only when it
is complete (fsync'd first), so a reader (a DuckDB view, a browser, `from_pretrained`) sees the old
version or the new one, never half of one. The temporary name, `.tmp-<name>-<random>.partial`, is
unique per writer and ends in `.partial`, so no reader's glob (`part-*.parquet`, `*.json`, `*.html`)
ever matches it; a crash leaves only such a file, which the next writer of the folder may delete.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def tmp_name(target: Path) -> Path:
    return target.with_name(f"{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:12]}.partial")


@contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; write a file or a folder there. When the block ends
    without an error, the file is fsync'd and renamed onto `target` (a folder at `target` is replaced);
    when it raises, the temporary path is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(target)
    try:
        yield tmp
        if tmp.is_dir():
            if target.exists():  # a folder cannot be renamed onto a folder: the old one goes first
                shutil.rmtree(target)
        else:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """A UTF-8 text file written whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_leftovers(folder: str | Path, pattern: str = f"{TMP_PREFIX}*", older_than: float | None = None) -> None:
    """Delete temporary files a crashed writer left in `folder`: all of them (call only where no other writer
    is busy), or those not modified for `older_than` seconds (a younger one may be a busy writer's)."""
    for stale in Path(folder).glob(pattern):
        if older_than is not None:
            try:
                if time.time() - stale.stat().st_mtime < older_than:
                    continue
            except FileNotFoundError:
                continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
