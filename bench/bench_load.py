"""Load through the local stack: many small files in many batches, concurrent writers, flat memory.

N small CT instances (default 10,000) are uploaded in B batches (default 20, one top-level folder each, the
uploads interleaved across batches) by W concurrent writers (default 8). Reported:

- files/s from the first upload to the last file terminal;
- per-file latency from the end of its upload to its terminal state (the ``finished_at`` server timestamp
  of its Firestore document), p50 / p99 / max;
- peak RSS (VmHWM) of every function server's process group, read from /proc while the run goes;
- the anonymize server's RSS after the first 1,000 terminal files and at the end (flat: growth < 25 %).

Exit status 1 if a file is missing or not terminal, or memory grew.

    python -m bench load                       # N=10000, B=20, W=8
    python -m bench.bench_load 1000            # a quick run (N from argv or SENDIT_LOAD_FILES)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

FUNCTIONS = ("anonymize", "deliver", "dead_letter", "sweep", "send", "status")
TERMINAL = {"ANONYMIZED", "SKIPPED", "FAILED", "SENT"}


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


# ------------------------------------------------------------------------------------------ memory


def _group_members(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class MemorySampler:
    """Samples RSS (sum over the process group) and the peak VmHWM of each member, every ``interval`` s."""

    groups: dict[str, int]
    interval: float = 1.0
    peak_kb: dict[str, dict[int, int]] = field(default_factory=dict)
    series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        now = time.time()
        for name, pgid in self.groups.items():
            rss = 0
            for pid in _group_members(pgid):
                rss += _status_kb(pid, "VmRSS")
                hwm = _status_kb(pid, "VmHWM")
                peaks = self.peak_kb.setdefault(name, {})
                peaks[pid] = max(peaks.get(pid, 0), hwm)
            self.series.setdefault(name, []).append((now, rss))

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self.sample()

    def rss_at(self, name: str, when: float) -> int:
        """The first RSS sample at or after ``when`` (kB)."""
        for t, rss in self.series.get(name, []):
            if t >= when:
                return rss
        return self.series[name][-1][1]


# ------------------------------------------------------------------------------------------ the run


def _payloads(n: int, batches: int, tag: str) -> list[tuple[str, bytes]]:
    from sendit.local.samples import StudySpec, make_instance

    out = []
    for i in range(n):
        b = i % batches
        spec = StudySpec(rows=8, columns=8, study_index=100 + b)
        buf = BytesIO()
        make_instance(spec, 1 + (i // batches) % 4, i + 1).save_as(buf, enforce_file_format=True)
        out.append((f"LOAD{tag}-{b:02d}/series_{1 + (i // batches) % 4}/IMG_{i:05d}.dcm", buf.getvalue()))
    return out


def _upload(project: str, bucket: str, payloads: list[tuple[str, bytes]], writers: int) -> dict[str, float]:
    from sendit.clients import Clients

    local = threading.local()
    done: dict[str, float] = {}

    def put(item: tuple[str, bytes]) -> None:
        if not hasattr(local, "bucket"):
            local.bucket = Clients(project).storage.bucket(bucket)
        local.bucket.blob(item[0]).upload_from_string(item[1], content_type="application/dicom")
        done[item[0]] = time.time()

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(put, payloads))
    return done


def _file_docs(db: Any, batch: str) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.collection("files").where(filter=FieldFilter("batch_id", "==", batch))
    fields = ["object", "state", "finished_at", "updated_at"]
    return [snap.to_dict() or {} for snap in query.select(fields).stream()]


def _wait_batches(db: Any, expected: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(expected)
    last = ""
    while pending and time.monotonic() < deadline:
        for batch, n in list(pending.items()):
            snap = db.collection("batches").document(batch).get()
            doc = snap.to_dict() if snap.exists else {}
            counts = (doc or {}).get("counts") or {}
            if (doc or {}).get("status") in ("DONEPROCESSING", "EMPTY") and counts.get("total") == n:
                del pending[batch]
        line = f"  batches done: {len(expected) - len(pending)}/{len(expected)}"
        if line != last:
            print(line, flush=True)
            last = line
        if pending:
            time.sleep(2)
    if pending:
        raise TimeoutError(f"{len(pending)} batches not done after {timeout:.0f} s")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(n: int, batches: int, writers: int) -> int:
    from sendit.clients import Clients
    from sendit.deid.identity import keyed_digest
    from sendit.local.stack import LocalStack

    print(f"load: {n} files in {batches} batches, {writers} concurrent writers", flush=True)
    with tempfile.TemporaryDirectory(prefix="sendit-load-") as tmp:
        stack = LocalStack(Path(tmp) / "stack")
        saved = dict(os.environ)
        stack.start()
        os.environ.update(stack.settings_env())
        try:
            return _run(stack, n, batches, writers, Clients(stack.project), keyed_digest)
        finally:
            stack.stop()
            os.environ.clear()
            os.environ.update(saved)


def _run(stack: Any, n: int, batches: int, writers: int, clients: Any, keyed_digest: Any) -> int:
    settings = stack.settings_env()
    key = settings["SENDIT_SECRET_KEY"].encode()
    staging = stack.bucket("staging")
    tag = uuid.uuid4().hex[:6]
    t = time.monotonic()
    payloads = _payloads(n, batches, tag)
    print(
        f"  generated {n} files ({sum(len(p) for _, p in payloads) / 1e6:.1f} MB)"
        f" in {time.monotonic() - t:.1f} s"
    )
    folders = sorted({name.split("/", 1)[0] for name, _ in payloads})
    expected = {keyed_digest(key, f"{staging}/{f}", 16): 0 for f in folders}
    batch_of = {f: keyed_digest(key, f"{staging}/{f}", 16) for f in folders}
    for name, _ in payloads:
        expected[batch_of[name.split("/", 1)[0]]] += 1

    sampler = MemorySampler({name: stack.service(f"function {name}").pid for name in FUNCTIONS})
    sampler.sample()
    sampler.start()
    began = time.time()
    uploaded = _upload(stack.project, staging, payloads, writers)
    upload_s = time.time() - began
    print(f"  uploaded in {upload_s:.1f} s ({n / upload_s:.0f} files/s)", flush=True)
    _wait_batches(clients.firestore, expected, timeout=max(600.0, n * 0.5))
    sampler.stop()

    docs = [d for batch in expected for d in _file_docs(clients.firestore, batch)]
    by_name = {d.get("object"): d for d in docs}
    missing = [name for name in uploaded if name not in by_name]
    not_terminal = [d for d in docs if d.get("state") not in TERMINAL]
    stamps = {name: d.get("finished_at") or d.get("updated_at") for name, d in by_name.items()}
    finished = {name: at.timestamp() for name, at in stamps.items() if at is not None}
    latencies = [finished[name] - uploaded[name] for name in uploaded if name in finished]
    last = max(finished.values())
    states: dict[str, int] = {}
    for d in docs:
        states[str(d.get("state"))] = states.get(str(d.get("state")), 0) + 1

    ordered = sorted(finished.values())
    early = min(1000, len(ordered)) - 1
    rss_early = sampler.rss_at("anonymize", ordered[early])
    rss_end = sampler.rss_at("anonymize", last)
    growth = (rss_end - rss_early) / rss_early if rss_early else 0.0

    print(f"  files: {len(docs)} documents for {n} uploads, states {states}")
    print(f"  lost: {len(missing)}   not terminal: {len(not_terminal)}")
    print(
        f"  throughput: {n / (last - began):.1f} files/s"
        f"  ({last - began:.1f} s first upload -> last terminal)"
    )
    print(
        f"  latency upload -> terminal: p50 {statistics.median(latencies):.2f} s, "
        f"p99 {_pct(latencies, 0.99):.2f} s, max {max(latencies):.2f} s"
    )
    for name in FUNCTIONS:
        peaks = sampler.peak_kb.get(name, {})
        print(
            f"  peak RSS {name:12s} {sum(peaks.values()) / 1024:7.1f} MB"
            f" (VmHWM summed over {len(peaks)} processes)"
        )
    print(
        f"  anonymize RSS after {early + 1} files {rss_early / 1024:.1f} MB, after {len(ordered)} files "
        f"{rss_end / 1024:.1f} MB ({growth * 100:+.1f} %)"
    )
    ok = not missing and not not_terminal and len(docs) == n and growth < 0.25
    print(f"  load {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args and args[0].isdigit() else _int("SENDIT_LOAD_FILES", 10_000)
    batches = _int("SENDIT_LOAD_BATCHES", 20)
    writers = _int("SENDIT_LOAD_WRITERS", 8)
    return run(n, min(batches, n), writers)


if __name__ == "__main__":
    sys.exit(main())
