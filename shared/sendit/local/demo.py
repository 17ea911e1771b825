"""`make demo`: the main job end to end on the local stack.

Starts the stack, writes sample studies (synthetic ones with planted identifiers, plus real sample files
that ship with pydicom and deid-data), uploads two folders with `sendit upload` (sealed by a manifest) and
one with the real gsutil CLI (no manifest: complete after the stable age), waits with visible progress
until every batch is complete - showing the manifest seal and the stable-age completion - triggers the
send over HTTP, waits for delivery, then prints what arrived in the destination bucket and BigQuery, asks
the stack's Orthanc (the DICOMweb target) with QIDO-RS which studies it holds, and checks that no planted
identifier arrived anywhere (bucket objects, rows, the instances Orthanc returns over WADO-RS). Stops the
stack at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sendit.dicomweb import DicomwebClient
from sendit.local.samples import PLANTED, StudySpec, write_study
from sendit.local.stack import LocalStack, StackError
from sendit.store.vocabulary import BatchState

# Identifiers in the demo's second synthetic patient and in the real sample files' headers.
REAL_SAMPLE_IDENTIFIERS = [
    b"Ekholm",
    b"MRN5550123",
    b"ACC5550123",
    b"CompressedSamples",
    b"SIMPSON",
    b"00007041776",
    b"JFK IMAGING",
    b"SPRINGFIELD GENERAL",
]


def _say(text: str) -> None:
    print(text, flush=True)


def write_samples(root: Path) -> list[Path]:
    """Three upload folders (= three batches); returns the folders."""
    if root.exists():
        shutil.rmtree(root)
    write_study(root, StudySpec(modality="CT", series=2, instances=3, study_index=1), folder="DEMO-CT")
    write_study(
        root,
        StudySpec(
            modality="MR",
            series=1,
            instances=4,
            study_index=2,
            patient_name="Ekholm^Brisa",
            patient_id="MRN5550123",
            accession="ACC5550123",
            study_date="20230905",
        ),
        folder="DEMO-MR",
    )
    real = root / "DEMO-REAL"
    real.mkdir(parents=True)
    copied = _copy_package_samples(real)
    (real / "notes.txt").write_text("this is not a DICOM file\n")
    _say(f"  real sample files from pydicom / deid-data: {', '.join(copied)} (+ notes.txt, not DICOM)")
    return [root / "DEMO-CT", root / "DEMO-MR", real]


def _copy_package_samples(dest: Path) -> list[str]:
    copied: list[str] = []
    try:
        from pydicom.data import get_testdata_file

        for name in ("CT_small.dcm", "MR_small.dcm"):
            path = get_testdata_file(name)
            if path:
                shutil.copy(str(path), dest / name)
                copied.append(name)
    except ImportError:
        pass
    try:
        import deid_data

        base = Path(deid_data.__file__).parent / "data"
        for rel in ("humans/ctbrain1.dcm", "ultrasounds/GREYSCALE_IMAGE.dcm", "animals/cat.dcm"):
            if (base / rel).exists():
                shutil.copy(base / rel, dest / Path(rel).name)
                copied.append(Path(rel).name)
    except ImportError:
        pass
    return copied


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except json.JSONDecodeError:
            return exc.code, None


def _batches(status_url: str) -> list[dict[str, Any]]:
    code, body = _http("GET", f"{status_url}/batches")
    if code != 200 or not isinstance(body, dict):
        raise RuntimeError(f"status API answered {code}")
    return list(body.get("batches", []))


def _wait(
    status_url: str, expected: int, done: set[str], what: str, timeout: float, files: int = 0
) -> list[dict[str, Any]]:
    """Until ``expected`` batches are all in ``done`` (and, with ``files``, hold that many files in all)."""
    deadline = time.monotonic() + timeout
    last = ""
    batches: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        batches = _batches(status_url)
        line = (
            "  "
            + what
            + ": "
            + "  ".join(_brief(b) for b in sorted(batches, key=lambda b: str(b.get("folder") or b["id"])))
        )
        if line != last:
            _say(line)
            last = line
        counted = sum(int((b.get("counts") or {}).get("total", 0)) for b in batches)
        if len(batches) >= expected and all(b["status"] in done for b in batches) and counted >= files:
            return batches
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not finished after {timeout:.0f} s")


def _brief(batch: dict[str, Any]) -> str:
    waiting = (batch.get("completion") or {}).get("waiting_for")
    why = f" [waiting for {waiting}]" if waiting else ""
    return f"{batch.get('folder') or batch['id'][:8]} {batch['status']}{why} {_counts(batch)}".rstrip()


def _completions(batches: list[dict[str, Any]], stable_age: str) -> None:
    """How each batch became complete: the manifest seal or the stable age."""
    for b in sorted(batches, key=lambda b: str(b.get("folder") or b["id"])):
        name = b.get("folder") or b["id"]
        how = b.get("completed_by")
        if how == "manifest":
            listed = (b.get("manifest") or {}).get("count")
            _say(
                f"   {name}: sealed by its manifest ({listed} listed objects, all terminal) -> {b['status']}"
            )
        elif how == "stable":
            _say(f"   {name}: no manifest; no new file for {stable_age} s (stable age) -> {b['status']}")
        else:
            _say(f"   {name}: {b['status']}")


def _counts(batch: dict[str, Any]) -> str:
    counts = batch.get("counts") or {}
    parts = [f"{k.lower()}={v}" for k, v in sorted(counts.items()) if v and k != "total"]
    return "(" + ", ".join(parts) + ")" if parts else ""


def run(workdir: Path) -> int:
    began = time.monotonic()
    demo_dir = (workdir / "demo").resolve()
    _say("sendit demo: the whole pipeline on the local stack")
    _say("1. starting the local stack (Pub/Sub, Firestore, GCS, BigQuery emulators, Orthanc + functions)...")
    stack = LocalStack(demo_dir / "stack")
    try:
        stack.start()
    except StackError as exc:
        _say(f"   the local stack failed to start: {exc}")
        return 1
    try:
        return _run(stack, demo_dir, began)
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as exc:
        _say(f"demo stopped: {exc}")
        _say(f"   function logs: {demo_dir / 'stack' / 'logs'}")
        return 1
    finally:
        stack.stop()
        _say("local stack stopped")


def _run(stack: LocalStack, demo_dir: Path, began: float) -> int:
    env = stack.stack_env()
    _say(f"   up in {time.monotonic() - began:.1f} s")
    _say("2. writing sample studies (synthetic with planted identifiers, and real sample files)...")
    folders = write_samples(demo_dir / "samples")
    files = sum(1 for f in folders for p in f.rglob("*") if p.is_file())
    _say(f"   {len(folders)} folders, {files} files")
    sealed, plain = folders[:2], folders[2:]
    _say(f"3. uploading {', '.join(f.name for f in sealed)} with `sendit upload` (sealed by a manifest)...")
    upload_env = {**os.environ, **env}
    subprocess.run(
        [sys.executable, "-m", "sendit.cli", "upload", *map(str, sealed)], check=True, env=upload_env
    )
    _say(f"   and {', '.join(f.name for f in plain)} with the real gsutil CLI (no manifest: stable age)")
    subprocess.run([env["SENDIT_UPLOAD_CMD"], *map(str, plain)], check=True)
    stable_age = env["SENDIT_STABLE_AGE_SECONDS"]
    _say(f"4. waiting until every batch is complete (status API; stable age {stable_age} s)...")
    status_url, send_url = env["SENDIT_STATUS_URL"], env["SENDIT_SEND_URL"]
    settled: set[str] = {BatchState.DONEPROCESSING, BatchState.EMPTY}
    # DONEPROCESSING means complete (sealed by its manifest, or stable): no count of the files uploaded is
    # needed to know the upload is in; the count is checked afterwards, and a shortfall fails the demo.
    batches = _wait(status_url, len(folders), settled, "processing", timeout=180)
    _completions(batches, stable_age)
    counted = sum(int((b.get("counts") or {}).get("total", 0)) for b in batches)
    if counted != files:
        raise RuntimeError(f"complete with {counted} of {files} uploaded files counted")
    _say("5. POST send (HTTP trigger): every complete batch...")
    code, body = _http("POST", send_url, {})
    _say(f"   {code}: {json.dumps(body)}")
    if code >= 400:
        raise RuntimeError(f"send answered {code}")
    ready = [b for b in batches if b["status"] == BatchState.DONEPROCESSING]
    _wait(status_url, len(folders), {BatchState.SENT, BatchState.EMPTY}, "delivering", timeout=180)
    return _report(stack, len(ready), began)


def _report(stack: LocalStack, sent_batches: int, began: float) -> int:
    from sendit.clients import Clients

    clients = Clients(stack.project)
    blobs = list(clients.storage.list_blobs(stack.bucket("destination")))
    _say(f"6. destination bucket gs://{stack.bucket('destination')}: {len(blobs)} objects")
    for blob in blobs[:12]:
        _say(f"   {blob.name}  ({blob.size} bytes)")
    if len(blobs) > 12:
        _say(f"   ... and {len(blobs) - 12} more")
    query = (
        f"SELECT patient_id, study_uid, modality, study_date, uri FROM `{stack.table_id}` "
        "ORDER BY patient_id, study_uid, uri"
    )
    rows = list(clients.bigquery.query(query).result(timeout=60))
    _say(f"7. BigQuery {stack.table_id}: {len(rows)} rows")
    for row in rows[:8]:
        _say(f"   {row.patient_id}  {row.modality}  {row.study_date}  {row.uri.rsplit('/', 1)[-1]}")
    client = DicomwebClient(stack.settings_env()["SENDIT_DICOMWEB_URL"])
    instances = _orthanc_studies(client)
    leaked = _leaks(clients, blobs, rows) + _orthanc_leaks(client)
    _say(f"9. planted identifiers found in delivered objects, rows or Orthanc's instances: {len(leaked)}")
    for item in leaked:
        _say(f"   LEAK: {item}")
    ok = not leaked and len(rows) == len(blobs) == instances and len(rows) > 0 and sent_batches > 0
    _say(f"demo {'finished' if ok else 'failed'} in {time.monotonic() - began:.1f} s")
    return 0 if ok else 1


# QIDO-RS attributes of a study (PS3.18 10.6.1.2.1): what `make demo` prints of each.
_STUDY_FIELDS = {
    "patient": "00100020",  # PatientID: the patient pseudonym
    "date": "00080020",  # StudyDate: shifted
    "modalities": "00080061",  # ModalitiesInStudy
    "series": "00201206",  # NumberOfStudyRelatedSeries
    "instances": "00201208",  # NumberOfStudyRelatedInstances
}


def _value(dataset: dict[str, Any], tag: str) -> str:
    values = (dataset.get(tag) or {}).get("Value") or []
    return "/".join(str(v) for v in values) or "-"


def _orthanc_studies(client: DicomwebClient) -> int:
    """Print the studies Orthanc holds (QIDO-RS); return the number of instances they hold."""
    studies = client.search_studies(includefield=",".join(_STUDY_FIELDS.values()))
    studies.sort(key=lambda s: (_value(s, _STUDY_FIELDS["patient"]), _value(s, "0020000D")))
    _say(f"8. Orthanc (DICOMweb, QIDO-RS {client.url}/studies): {len(studies)} studies")
    _say("   patient pseudonym                 study date  modality  series  instances")
    total = 0
    for study in studies:
        patient, date, modality, series, count = (_value(study, t) for t in _STUDY_FIELDS.values())
        _say(f"   {patient:<33} {date:<11} {modality:<9} {series:>6}  {count:>9}")
        total += int(count) if count.isdigit() else 0
    return total


def _orthanc_leaks(client: DicomwebClient) -> list[str]:
    """Every instance Orthanc holds, retrieved over WADO-RS and scanned for the planted identifiers."""
    needles = [v.encode() for v in PLANTED.values()] + REAL_SAMPLE_IDENTIFIERS
    found = []
    for study in client.search_studies():
        study_uid = _value(study, "0020000D")
        for instance in client.search_instances(study_uid):
            series_uid, sop_uid = _value(instance, "0020000E"), _value(instance, "00080018")
            data = client.retrieve_instance(study_uid, series_uid, sop_uid)
            found += [f"Orthanc {sop_uid}: {n.decode()}" for n in needles if n in data]
    return found


def _leaks(clients: Any, blobs: list[Any], rows: list[Any]) -> list[str]:
    needles = [v.encode() for v in PLANTED.values()] + REAL_SAMPLE_IDENTIFIERS
    found = []
    for blob in blobs:
        data = blob.download_as_bytes()
        found += [f"{blob.name}: {n.decode()}" for n in needles if n in data]
    text = json.dumps([dict(r.items()) for r in rows], default=str).encode()
    found += [f"BigQuery: {n.decode()}" for n in needles if n in text]
    return found


if __name__ == "__main__":
    sys.exit(run(Path(".local")))
