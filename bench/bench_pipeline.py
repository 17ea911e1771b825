"""Files/s through the local stack and the pipeline's own overhead per file.

For each batch size N: N small synthetic CT instances are uploaded by 8 concurrent writers into one
staging folder, then sealed with its manifest (``sendit-manifest.json`` as `sendit upload` writes it); the
clock runs from the first upload to the batch reaching DONEPROCESSING with N terminal files. From the
anonymize function's log (one ``file_outcome`` line per file) it reports the time per file inside the
engine (``engine_ms``) and outside it (``total_ms - engine_ms``: claim + tally, batch read, download,
upload, record + tally, completion check): our overhead, which must not grow with N. One function
instance (one functions-framework server).

    python -m bench pipeline            # N = 500, 2000 and 10000
    SENDIT_BENCH_SIZES=200 python -m bench pipeline
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

WRITERS = 8
DEFAULT_SIZES = (500, 2000, 10000)
STEPS = ("claim_ms", "open_ms", "download_ms", "upload_ms", "record_ms", "completion_ms")


def _payloads(folder: str, n: int, study: int = 1) -> list[tuple[str, bytes]]:
    from sendit.local.samples import StudySpec, make_instance

    spec = StudySpec(rows=8, columns=8, series=4, study_index=study)
    out = []
    for i in range(n):
        buf = BytesIO()
        make_instance(spec, 1 + i % 4, i + 1).save_as(buf, enforce_file_format=True)
        out.append((f"{folder}/series_{1 + i % 4}/IMG_{i:05d}.dcm", buf.getvalue()))
    return out


def _upload(project: str, bucket: str, folder: str, payloads: list[tuple[str, bytes]]) -> float:
    """Upload every payload, then the folder's manifest (the seal) as its last object."""
    from sendit.clients import Clients
    from sendit.manifest import CONTENT_TYPE, Manifest, ManifestEntry

    local = threading.local()

    def put(item: tuple[str, bytes]) -> ManifestEntry:
        if not hasattr(local, "bucket"):
            local.bucket = Clients(project).storage.bucket(bucket)
        blob = local.bucket.blob(item[0])
        blob.upload_from_string(item[1], content_type="application/dicom")
        return ManifestEntry(item[0], int(blob.size), str(blob.md5_hash), str(blob.generation))

    began = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        entries = list(pool.map(put, payloads))
    manifest = Manifest.build(folder, entries)
    target = Clients(project).storage.bucket(bucket).blob(manifest.name)
    target.upload_from_string(manifest.to_json(), content_type=CONTENT_TYPE)
    return time.monotonic() - began


def _wait(db: Any, batch: str, n: int, timeout: float) -> dict[str, Any]:
    from sendit.store.base import Store
    from sendit.store.batches import get_batch
    from sendit.store.vocabulary import BatchState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = get_batch(Store.of(db), batch=batch) or {}
        counts = doc.get("counts") or {}
        if doc.get("status") in (BatchState.DONEPROCESSING, BatchState.EMPTY) and counts.get("total") == n:
            return doc
        time.sleep(0.2)
    raise TimeoutError(f"batch of {n} files not done after {timeout:.0f}s")


def _outcomes(log_path: Path, batch: str) -> list[dict[str, Any]]:
    entries = []
    for line in log_path.read_text().splitlines():
        if batch in line and '"file_outcome"' in line:
            entries.append(json.loads(line))
    return entries


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run(stack: Any, n: int) -> dict[str, Any]:
    from sendit import naming
    from sendit.clients import Clients
    from sendit.config import Settings

    settings = Settings.from_env(stack.settings_env())
    folder = f"B{uuid.uuid4().hex[:10]}"
    batch = naming.batch_id(settings.secret_key, settings.staging_bucket, folder)
    payloads = _payloads(folder, n)
    began = time.monotonic()
    upload_s = _upload(stack.project, settings.staging_bucket, folder, payloads)
    doc = _wait(Clients(stack.project).firestore, batch, n, timeout=60 + n * 0.5)
    wall = time.monotonic() - began
    outcomes = _outcomes(stack.service("function anonymize").log_path, batch)
    total = [float(e["total_ms"]) for e in outcomes if "total_ms" in e]
    engine = [float(e.get("engine_ms", 0.0)) for e in outcomes if "total_ms" in e]
    overhead = [t - e for t, e in zip(total, engine, strict=True)]
    parts = {p: statistics.mean(float(e.get(p, 0.0)) for e in outcomes) if outcomes else 0.0 for p in STEPS}
    return {
        "n": n,
        "anonymized": doc["counts"]["ANONYMIZED"],
        "completed_by": doc.get("completed_by"),
        "upload_s": upload_s,
        "wall_s": wall,
        "files_per_s": n / wall,
        "engine_ms_mean": statistics.mean(engine) if engine else 0.0,
        "total_ms_mean": statistics.mean(total) if total else 0.0,
        "overhead_ms_mean": statistics.mean(overhead) if overhead else 0.0,
        "overhead_ms_p50": _pct(overhead, 0.5),
        "overhead_ms_p95": _pct(overhead, 0.95),
        "overhead_share": (sum(overhead) / sum(total)) if total else 0.0,
        **{f"{k}_mean": v for k, v in parts.items()},
    }


def main() -> int:
    os.environ.setdefault("MESSAGELEVEL", "QUIET")
    from sendit.local.stack import LocalStack

    sizes = tuple(int(s) for s in os.environ.get("SENDIT_BENCH_SIZES", "").split(",") if s.strip())
    sizes = sizes or DEFAULT_SIZES
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="sendit-bench-") as tmp:
        stack = LocalStack(Path(tmp))
        stack.start()
        try:
            os.environ.update(stack.settings_env())
            results = [run(stack, n) for n in sizes]
        finally:
            stack.stop()
            os.environ.clear()
            os.environ.update(saved)
    print(f"pipeline through the local stack, {WRITERS} concurrent uploaders, one function instance")
    print(
        f"{'files':>6} {'upload s':>9} {'wall s':>7} {'files/s':>8} {'engine ms':>10} {'total ms':>9} "
        f"{'overhead ms p50/p95':>20} {'overhead share':>15}"
    )
    for r in results:
        print(
            f"{r['n']:>6} {r['upload_s']:>9.1f} {r['wall_s']:>7.1f} {r['files_per_s']:>8.1f} "
            f"{r['engine_ms_mean']:>10.1f} {r['total_ms_mean']:>9.1f} "
            f"{r['overhead_ms_p50']:>9.1f}/{r['overhead_ms_p95']:<10.1f} {r['overhead_share']:>15.0%}"
        )
        print(
            f"{'':>6} overhead mean {r['overhead_ms_mean']:.1f} ms: claim {r['claim_ms_mean']:.1f},"
            f" batch read {r['open_ms_mean']:.1f}, download {r['download_ms_mean']:.1f},"
            f" upload {r['upload_ms_mean']:.1f}, record {r['record_ms_mean']:.1f},"
            f" completion check {r['completion_ms_mean']:.1f} (completed by {r['completed_by']})"
        )
    for r in results:  # what sendit itself does per file (Firestore: claim, batch read, record, completion)
        r["own_ms"] = sum(r[f"{p}_mean"] for p in ("claim_ms", "open_ms", "record_ms", "completion_ms"))
        r["gcs_ms"] = r["download_ms_mean"] + r["upload_ms_mean"]
    print(
        "sendit's own steps per file (claim + batch read + record + completion check) vs the GCS emulator's "
        "(download + upload): "
        + ", ".join(f"N={r['n']} {r['own_ms']:.1f} / {r['gcs_ms']:.1f} ms" for r in results)
    )
    if len(results) > 1:
        base = results[0]["overhead_ms_mean"] or 1.0
        print(
            "overhead outside the engine relative to N="
            + str(results[0]["n"])
            + ": "
            + ", ".join(f"N={r['n']} {r['overhead_ms_mean'] / base:.2f}x" for r in results)
        )
    failed = [r for r in results if r["anonymized"] != r["n"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
