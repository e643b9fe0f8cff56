"""Where rad-harness keeps derived files (converted teachers, fetched data), and how it writes
them: into a temporary sibling first, renamed into place only when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.common.errors import CacheError, UserError
from rad.files import atomic_write


def cache_dir() -> Path:
    """`$RAD_CACHE_DIR`, else `~/.cache/rad-harness`."""
    return Path(os.environ.get("RAD_CACHE_DIR") or Path.home() / ".cache/rad-harness").expanduser()


def ensure_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as e:
        in_cache = Path(path).resolve().is_relative_to(cache_dir().resolve())
        fix = ("set RAD_CACHE_DIR to a writable folder" if in_cache
               else "choose a writable output location")
        raise CacheError(f"folder {path} is not writable ({e.strerror}); {fix}") from None
    return path


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success rename it to `final`, on any error
    delete it, so `final` is either absent or complete (never half-written)."""
    ensure_writable_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        if final.exists():  # another process finished first; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` via a temporary sibling and a rename: readers never see half a file."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError as e:
        raise CacheError(f"cannot write {path} ({e.strerror})") from None


def check_output_file(path: Path) -> Path:
    """Fail before a long run, not after it, when its output file cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise CacheError(f"output path {path} is a folder; give a file name")
    ensure_writable_dir(path.parent)
    return path


def read_json(path: Path, what: str) -> dict:
    """A JSON file the user pointed at (or a run folder holds); one-line UserError otherwise."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
