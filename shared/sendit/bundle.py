"""Build the ONE deployable source archive every Cloud Function is deployed from.

Layout at the archive root (what Cloud Functions' Python buildpack expects)::

    main.py            <- functions/main.py (the entry points)
    requirements.txt   <- requirements.txt (runtime dependencies)
    sendit/...         <- shared/sendit (the library with its JSON schema, topology and recipe files),
                          without ``sendit/local`` (the local twin) and ``sendit/cli`` (the operator CLI)

The archive is deterministic: entries sorted, fixed timestamps and permissions, fixed compression level.
The same sources therefore give the same bytes, and the file name carries their hash:
``sendit-functions-<sha256[:12]>.zip``. Terraform uploads it under that name, so only a real change to the
code redeploys the functions.

Usage: ``python -m sendit.bundle OUT_DIR`` prints the path of the archive it wrote. Standard library only,
so Cloud Build can run it with ``PYTHONPATH=shared`` and nothing installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

ARCHIVE_PREFIX = "sendit-functions-"
HASH_LENGTH = 12
# 1980-01-01 is the earliest time a zip entry can carry.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_EXCLUDED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
_EXCLUDED_NAMES = {".DS_Store"}
# Sub-packages no function imports: the local twin and the operator CLI stay out of the deployed archive.
EXCLUDED_PACKAGES = ("local", "cli")


def repo_root() -> Path:
    """The checkout this module lives in (shared/sendit/bundle.py -> the repository root)."""
    return Path(__file__).resolve().parents[2]


def _package_files(package_dir: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(package_dir):
        # Prune in place so os.walk never descends into caches; sorted for a stable walk.
        top = Path(dirpath) == package_dir
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _EXCLUDED_DIRS
            and not d.endswith(".egg-info")
            and not (top and d in EXCLUDED_PACKAGES)
        )
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if filename in _EXCLUDED_NAMES or path.suffix in _EXCLUDED_SUFFIXES or path.is_symlink():
                continue
            yield "sendit/" + path.relative_to(package_dir).as_posix(), path


def entries(root: Path | None = None) -> list[tuple[str, Path]]:
    """(archive name, source file) pairs, sorted by archive name."""
    base = (root or repo_root()).resolve()
    required = {
        "main.py": base / "functions" / "main.py",
        "requirements.txt": base / "requirements.txt",
    }
    package_dir = base / "shared" / "sendit"
    missing = [str(p) for p in (*required.values(), package_dir / "__init__.py") if not p.is_file()]
    if missing:
        raise FileNotFoundError("bundle sources missing: " + ", ".join(missing))
    pairs = list(required.items()) + list(_package_files(package_dir))
    return sorted(pairs)


def archive_bytes(root: Path | None = None) -> bytes:
    """The archive as bytes (deterministic for the same source files)."""
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as buffer:
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, path in entries(root):
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so external_attr carries the permission bits
                info.external_attr = (0o100644 & 0xFFFF) << 16
                archive.writestr(info, path.read_bytes(), compresslevel=9)
        buffer.seek(0)
        return buffer.read()


def archive_name(data: bytes) -> str:
    """``sendit-functions-<sha256[:12]>.zip`` for the archive bytes."""
    return f"{ARCHIVE_PREFIX}{hashlib.sha256(data).hexdigest()[:HASH_LENGTH]}.zip"


def build(out_dir: str | os.PathLike[str], root: Path | None = None) -> Path:
    """Write the archive into ``out_dir`` (created if needed) and return its path."""
    data = archive_bytes(root)
    target_dir = Path(out_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / archive_name(data)
    if target.is_file() and target.read_bytes() == data:
        return target
    # Write then rename, so a reader never sees a half-written archive under the hashed name.
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".bundle-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sendit.bundle",
        description="Build the deterministic Cloud Functions source archive and print its path.",
    )
    parser.add_argument("out_dir", help="folder to write sendit-functions-<sha256[:12]>.zip into")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out_dir, args.root)
    except FileNotFoundError as exc:
        print(f"sendit.bundle: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
