"""`sendit upload FOLDER...`: upload study folders to the staging bucket, then seal each with its manifest.

Each FOLDER becomes one top-level folder of the bucket (its base name), that is one batch. Files are
uploaded in parallel (a thread pool, one Storage client per thread), each with an ``ifGenerationMatch``
precondition (0 for a new object, the listed generation for a changed one), so the client's retry (bounded
by ``RETRY_DEADLINE``) is safe; files above 8 MiB go as resumable uploads in ``CHUNK_SIZE`` chunks. Every
upload is checksummed: the client verifies CRC32C against the server's, the local MD5 is sent for the
server to check, and the MD5 the bucket reports must equal the local one. Files whose name, size and MD5
already match the bucket's listing are skipped, so a re-run uploads only what is missing or changed.

Only when every file of a folder is in the bucket and verified is ``<FOLDER>/sendit-manifest.json`` written,
as the folder's last object (see ``sendit.manifest``); a folder with any failure gets no manifest.

What is uploaded: regular files, and symbolic links to regular files (their content, under the link's name).
Not uploaded, counted in the summary: hidden files and folders (a name starting with ``.``, such as
``.DS_Store``) unless ``--include-hidden``; symbolic links to folders (never followed: no loops, nothing from
outside the folder); other special files; a top-level ``sendit-manifest.json`` (that name is the seal's). A
broken link, an unreadable file, a name GCS cannot store, or a folder with nothing to upload is a failure.
Names are used as the file system gives them (no Unicode normalization).

Output: a progress bar on stderr (only on a terminal and without ``--quiet``) and a summary per folder on
stdout. They are for the person uploading, on their own machine: unlike the pipeline's logs they name the
local files that failed, so they can be fixed.

Exit codes: 0 every folder uploaded and sealed; 1 at least one folder had failures and was not sealed (the
others were); 2 nothing was attempted (bad arguments, no bucket, a FOLDER missing or not a folder, two
FOLDERs with the same name); 130 interrupted (no manifest written for the folder in progress).
"""

from __future__ import annotations

import argparse
import io
import mimetypes
import os
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sendit.manifest import (
    CONTENT_TYPE as MANIFEST_CONTENT_TYPE,
)
from sendit.manifest import (
    MANIFEST_NAME,
    Checksums,
    Manifest,
    ManifestEntry,
    file_checksums,
    is_manifest,
    manifest_name,
)

if TYPE_CHECKING:
    from google.cloud import storage

CHUNK_SIZE = 8 * 1024**2  # resumable chunk (a multiple of 256 KiB); files above 8 MiB upload resumably
RETRY_DEADLINE = 300.0  # seconds the client retries one upload (transient errors, 429, 5xx)
REQUEST_TIMEOUT = (10.0, 120.0)  # connect, read seconds per request
DEFAULT_WORKERS = 8
MAX_NAME_BYTES = 1024  # GCS object name limit

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Nothing was attempted; the message is for the person running the command."""


# ------------------------------------------------------------------------------------------ local side


@dataclass(frozen=True)
class LocalFile:
    path: Path
    relpath: str  # inside the folder, with "/"
    name: str  # the object name: FOLDER/relpath


@dataclass
class Scan:
    """A local folder: what will be uploaded, what is left out (by kind), what cannot be uploaded."""

    root: Path
    folder: str
    files: list[LocalFile] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)


def object_name_problem(name: str) -> str | None:
    """Why GCS cannot store ``name`` as an object name, or None."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"the object name is longer than {MAX_NAME_BYTES} bytes"
    if "\r" in name or "\n" in name:
        return "the file name contains a line break"
    return None


def folder_name(path: Path) -> str:
    """The batch folder a local folder uploads to: its base name (``path/to/L1/`` -> ``L1``)."""
    name = Path(os.path.abspath(path)).name
    if not name or name in {".", ".."} or object_name_problem(name + "/x"):
        raise UsageError(f"{path}: cannot be used as a folder name in the bucket")
    return name


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(root: Path, include_hidden: bool = False) -> Scan:
    """Walk ``root`` (without following links to folders) and classify every entry."""
    scan = Scan(root=root, folder=folder_name(root))

    def unreadable(error: OSError) -> None:
        where = Path(error.filename or root)
        scan.failures.append((_rel(root, where), f"cannot read the folder ({error.strerror or 'error'})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            if not include_hidden and _hidden(name):
                scan.ignored["hidden"] += 1
            elif (here / name).is_symlink():
                scan.ignored["link to a folder"] += 1
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            _classify(scan, here / name, include_hidden)
    return scan


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _classify(scan: Scan, path: Path, include_hidden: bool) -> None:
    relpath = _rel(scan.root, path)
    if not include_hidden and _hidden(path.name):
        scan.ignored["hidden"] += 1
        return
    if relpath == MANIFEST_NAME:
        scan.ignored[f"local {MANIFEST_NAME} (the tool writes it)"] += 1
        return
    try:
        mode = path.stat().st_mode  # follows a link to its target
    except OSError as exc:
        reason = "broken symbolic link" if path.is_symlink() else f"cannot read ({exc.strerror or 'error'})"
        scan.failures.append((relpath, reason))
        return
    if not stat.S_ISREG(mode):
        scan.ignored["not a regular file"] += 1
        return
    name = f"{scan.folder}/{relpath}"
    problem = object_name_problem(name)
    if problem:
        scan.failures.append((relpath, problem))
        return
    scan.files.append(LocalFile(path=path, relpath=relpath, name=name))


# ------------------------------------------------------------------------------------------ bucket side


@dataclass(frozen=True)
class Remote:
    """An object as the bucket's listing shows it."""

    size: int
    md5: str | None
    generation: str


def storage_client() -> storage.Client:
    """A Storage client: the emulator with anonymous credentials when STORAGE_EMULATOR_HOST is set."""
    from google.cloud import storage

    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_DEADLINE)


def list_remote(client: storage.Client, bucket: str, folder: str) -> dict[str, Remote]:
    """Every object under ``folder/`` with its size, MD5 and generation."""
    blobs = client.list_blobs(bucket, prefix=folder + "/", retry=_retry(), timeout=REQUEST_TIMEOUT)
    return {
        b.name: Remote(size=int(b.size or 0), md5=b.md5_hash, generation=str(b.generation)) for b in blobs
    }


# ------------------------------------------------------------------------------------------ one file


@dataclass(frozen=True)
class FileResult:
    relpath: str
    outcome: str  # "uploaded" | "unchanged" | "failed"
    size: int = 0
    entry: ManifestEntry | None = None
    reason: str = ""


class _ProgressReader(io.BufferedReader):
    """A file that reports how far it has been read (the high-water mark: a retried chunk counts once)."""

    def __init__(self, path: Path, advance: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._advance = advance
        self._reached = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        position = self.tell()
        if position > self._reached:
            self._advance(position - self._reached)
            self._reached = position
        return data


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request: the HTTP code or the error type, never the request's URL."""
    code = getattr(exc, "code", None)
    return f"HTTP {int(code)}" if isinstance(code, int) else type(exc).__name__


class FolderUploader:
    """Uploads the files of one folder with a pool of threads, one Storage client per thread."""

    def __init__(
        self,
        bucket: str,
        remote: dict[str, Remote],
        client_factory: Callable[[], storage.Client],
        advance: Callable[[int], None],
    ) -> None:
        self.bucket = bucket
        self.remote = remote
        self._factory = client_factory
        self._advance = advance
        self._local = threading.local()

    def _bucket(self) -> storage.Bucket:
        bucket = getattr(self._local, "bucket", None)
        if bucket is None:
            bucket = self._factory().bucket(self.bucket)
            self._local.bucket = bucket
        return bucket

    def one(self, local: LocalFile) -> FileResult:
        try:
            sums = file_checksums(local.path)
        except OSError as exc:
            return FileResult(local.relpath, "failed", reason=f"cannot read ({exc.strerror or 'error'})")
        remote = self.remote.get(local.name)
        if remote is not None and remote.size == sums.size and remote.md5 == sums.md5:
            self._advance(sums.size)
            entry = ManifestEntry(local.name, sums.size, sums.md5, remote.generation)
            return FileResult(local.relpath, "unchanged", sums.size, entry)
        try:
            generation = self._put(local, sums, remote)
        except OSError as exc:
            return FileResult(local.relpath, "failed", reason=f"cannot read ({exc.strerror or 'error'})")
        except _Mismatch as exc:
            return FileResult(local.relpath, "failed", reason=str(exc))
        except Exception as exc:  # any API or transport error after the client's retries
            return FileResult(local.relpath, "failed", reason=f"upload failed ({_reason(exc)})")
        entry = ManifestEntry(local.name, sums.size, sums.md5, generation)
        return FileResult(local.relpath, "uploaded", sums.size, entry)

    def _put(self, local: LocalFile, sums: Checksums, remote: Remote | None) -> str:
        """Upload one file under a generation precondition; return the verified generation."""
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket().blob(local.name, chunk_size=CHUNK_SIZE)
        blob.md5_hash = sums.md5  # GCS rejects the upload when the bytes it received hash differently
        content_type = mimetypes.guess_type(local.relpath)[0] or "application/octet-stream"
        try:
            with _ProgressReader(local.path, self._advance) as handle:
                blob.upload_from_file(
                    handle,
                    size=sums.size,
                    content_type=content_type,
                    if_generation_match=int(remote.generation) if remote else 0,
                    checksum="crc32c",
                    retry=_retry(),
                    timeout=REQUEST_TIMEOUT,
                )
        except PreconditionFailed:
            # A retry whose first attempt had landed, or another writer: look at what is there now.
            blob = self._bucket().get_blob(local.name, retry=_retry(), timeout=REQUEST_TIMEOUT) or blob
        return verified(blob, sums.size, sums.md5)


class _Mismatch(Exception):
    """The bucket's object is not the local file."""


def verified(blob: storage.Blob, size: int, md5: str) -> str:
    """The blob's generation, if the bucket reports exactly this size and MD5."""
    if blob.generation is None or blob.size is None or int(blob.size) != size or blob.md5_hash != md5:
        raise _Mismatch("the bucket's size or MD5 differs from the local file (changed during the upload?)")
    return str(blob.generation)


# ------------------------------------------------------------------------------------------ one folder


@dataclass
class FolderReport:
    folder: str
    root: Path
    uploaded: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    bytes_uploaded: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    ignored: Counter[str] = field(default_factory=Counter)
    not_local: int = 0  # objects under FOLDER/ in the bucket with no local file (left alone, not listed)
    manifest: Manifest | None = None
    manifest_generation: str = ""

    @property
    def sealed(self) -> bool:
        return self.manifest is not None


def _progress_bar(total: int, files: int, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        postfix=f"0/{files} files",
        leave=False,
        dynamic_ncols=True,
    )


def upload_folder(
    scan: Scan,
    bucket: str,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    client_factory: Callable[[], storage.Client] = storage_client,
) -> FolderReport:
    """Upload what is missing or changed, verify it, and seal the folder unless something failed."""
    began = time.monotonic()
    report = FolderReport(folder=scan.folder, root=scan.root, ignored=scan.ignored)
    report.failures.extend(scan.failures)
    try:
        remote = list_remote(client_factory(), bucket, scan.folder)
    except Exception as exc:
        report.failures.append(("", f"cannot list the bucket folder ({_reason(exc)})"))
        return report
    sizes = {f.name: _size(f.path) for f in scan.files}
    local_names = set(sizes)
    report.not_local = sum(1 for n in remote if n not in local_names and not is_manifest(n))
    entries = []
    lock = threading.Lock()
    with _progress_bar(sum(sizes.values()), len(scan.files), scan.folder, progress) as bar:

        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        uploader = FolderUploader(bucket, remote, client_factory, advance)
        for done, result in enumerate(_map(uploader.one, scan.files, workers), start=1):
            with lock:
                bar.set_postfix_str(f"{done}/{len(scan.files)} files", refresh=False)
            _count(report, result)
            if result.entry is not None:
                entries.append(result.entry)
    if not scan.files and not report.failures:
        report.failures.append(("", "nothing to upload (no files)"))
    if not report.failures:
        _seal(report, Manifest.build(scan.folder, entries), bucket, remote, client_factory())
    report.seconds = time.monotonic() - began
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _map(
    work: Callable[[LocalFile], FileResult], files: list[LocalFile], workers: int
) -> Iterator[FileResult]:
    """Results as they finish; on an interrupt, queued files are cancelled (in-flight ones complete)."""
    from concurrent.futures import as_completed

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sendit-upload")
    try:
        futures = [pool.submit(work, f) for f in files]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _count(report: FolderReport, result: FileResult) -> None:
    report.bytes_total += result.size
    if result.outcome == "uploaded":
        report.uploaded += 1
        report.bytes_uploaded += result.size
    elif result.outcome == "unchanged":
        report.unchanged += 1
    else:
        report.failures.append((result.relpath, result.reason))


def _seal(
    report: FolderReport, manifest: Manifest, bucket: str, remote: dict[str, Remote], client: storage.Client
) -> None:
    """Write the manifest as the folder's last object (replacing an earlier one by its generation)."""
    from google.api_core.exceptions import PreconditionFailed

    previous = remote.get(manifest_name(manifest.folder))
    body = manifest.to_json().encode("utf-8")
    sums = Checksums(size=len(body), md5=_md5(body), crc32c="")
    blob = client.bucket(bucket).blob(manifest.name)
    blob.md5_hash = sums.md5
    try:
        blob.upload_from_string(
            body,
            content_type=MANIFEST_CONTENT_TYPE,
            if_generation_match=int(previous.generation) if previous else 0,
            checksum="crc32c",
            retry=_retry(),
            timeout=REQUEST_TIMEOUT,
        )
    except PreconditionFailed:
        report.failures.append((MANIFEST_NAME, "another upload replaced the manifest meanwhile; run again"))
        return
    except Exception as exc:
        report.failures.append((MANIFEST_NAME, f"writing the manifest failed ({_reason(exc)})"))
        return
    try:
        report.manifest_generation = verified(blob, sums.size, sums.md5)
    except _Mismatch as exc:
        report.failures.append((MANIFEST_NAME, str(exc)))
        return
    report.manifest = manifest


def _md5(data: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


# ------------------------------------------------------------------------------------------ summary


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_report(report: FolderReport, bucket: str) -> str:
    rate = report.bytes_uploaded / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"{report.folder}: {report.uploaded} uploaded, {report.unchanged} unchanged (skipped), "
        f"{len(report.failures)} failed; {_human(report.bytes_uploaded)} uploaded of "
        f"{_human(report.bytes_total)} in {report.seconds:.1f} s ({_human(rate)}/s)"
    ]
    if report.ignored:
        lines.append(
            "  not uploaded: " + ", ".join(f"{n} {kind}" for kind, n in sorted(report.ignored.items()))
        )
    if report.not_local:
        lines.append(
            f"  {report.not_local} object(s) in the bucket folder have no local file: left alone, not listed"
        )
    for relpath, reason in report.failures:
        lines.append(f"  failed: {relpath or '(folder)'}: {reason}")
    if report.manifest is not None:
        lines.append(
            f"  sealed: gs://{bucket}/{report.manifest.name} "
            f"({report.manifest.count} objects, generation {report.manifest_generation})"
        )
    else:
        lines.append("  NOT sealed: no manifest written; fix the failures and run `sendit upload` again")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", type=Path, help="a study folder (one batch)")
    parser.add_argument("--bucket", help="staging bucket (default: $SENDIT_STAGING_BUCKET)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"parallel uploads (default {DEFAULT_WORKERS})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--include-hidden",
        action="store_true",
        help="also upload hidden files and folders (names starting '.')",
    )


def _scan_all(args: argparse.Namespace) -> list[Scan]:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    scans: list[Scan] = []
    for path in args.folders:
        if not path.is_dir():
            raise UsageError(f"{path}: not a folder")
        scans.append(scan_folder(path, include_hidden=args.include_hidden))
    names = Counter(s.folder for s in scans)
    twice = sorted(n for n, c in names.items() if c > 1)
    if twice:
        raise UsageError(f"two FOLDERs upload to the same bucket folder: {', '.join(twice)}")
    return scans


def run(name: str, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        bucket = args.bucket or os.environ.get("SENDIT_STAGING_BUCKET") or ""
        if not bucket:
            raise UsageError("no bucket: pass --bucket or set SENDIT_STAGING_BUCKET")
        scans = _scan_all(args)
    except UsageError as exc:
        sys.stderr.write(f"sendit {name}: {exc}\n")
        return EXIT_USAGE
    show = not args.quiet and sys.stderr.isatty()
    sealed = 0
    try:
        for scan in scans:
            report = upload_folder(scan, bucket, workers=args.workers, progress=show)
            out.write(format_report(report, bucket))
            out.flush()
            sealed += report.sealed
    except KeyboardInterrupt:
        sys.stderr.write(f"sendit {name}: interrupted; the folder in progress was not sealed\n")
        return EXIT_INTERRUPTED
    if len(scans) > 1:
        out.write(f"{sealed} of {len(scans)} folders sealed\n")
    return EXIT_OK if sealed == len(scans) else EXIT_FAILED
