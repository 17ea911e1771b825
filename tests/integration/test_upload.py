"""`sendit upload` against the local stack: every object verified, the manifest written last, re-runs
upload only what changed, failures leave the folder unsealed, and the CLI end to end."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1
from support.polling import wait_for

from sendit.local.samples import StudySpec, write_study
from sendit.manifest import MANIFEST_NAME, Manifest, is_manifest
from sendit.upload import EXIT_FAILED, EXIT_OK, FolderReport, scan_folder, upload_folder

pytestmark = pytest.mark.stack

BIG = 9 * 1024**2 + 123  # above the 8 MiB multipart limit: a resumable upload in two chunks


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _study(root: Path, folder: str, big: bool = False) -> Path:
    write_study(root, StudySpec(series=2, instances=3), folder=folder)
    if big:
        (root / folder / "scan report.bin").write_bytes(os.urandom(BIG))
        (root / folder / "empty.txt").write_bytes(b"")
    return root / folder


def _local(path: Path) -> dict[str, tuple[int, str]]:
    """relpath -> (size, md5) of every file under path."""
    return {
        p.relative_to(path).as_posix(): (p.stat().st_size, _md5(p.read_bytes()))
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _bucket_objects(clients: Any, bucket: str, folder: str) -> dict[str, Any]:
    return {b.name: b for b in clients.storage.list_blobs(bucket, prefix=folder + "/")}


def _manifest(clients: Any, bucket: str, folder: str) -> Manifest:
    blob = clients.storage.bucket(bucket).blob(f"{folder}/{MANIFEST_NAME}")
    return Manifest.from_json(blob.download_as_bytes())


def _upload(path: Path, bucket: str, workers: int = 4) -> FolderReport:
    return upload_folder(scan_folder(path), bucket, workers=workers)


def _probe(stack: Any, clients: Any) -> str:
    """A pull subscription of our own on the uploads topic (what the anonymize function is sent)."""
    sub = pubsub_v1.SubscriberClient()
    name = f"probe-{uuid.uuid4().hex[:8]}"
    sub.create_subscription(
        name=sub.subscription_path(stack.project, name), topic=clients.topic_path(stack.topic("uploads"))
    )
    sub.close()
    return name


def _finalized(stack: Any, subscription: str, folder: str, want: int) -> list[Any]:
    """Pull until ``want`` distinct (object, generation) finalize notifications of ``folder`` arrived."""
    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(stack.project, subscription)
    seen: dict[tuple[str, str], Any] = {}

    def pull() -> bool:
        response = sub.pull(request={"subscription": path, "max_messages": 100}, timeout=5)
        for received in response.received_messages:
            attrs = received.message.attributes
            if attrs.get("objectId", "").startswith(folder + "/"):
                seen[(attrs["objectId"], attrs["objectGeneration"])] = received.message
        if response.received_messages:
            sub.acknowledge(
                request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
        return len(seen) >= want

    try:
        wait_for(pull, timeout=60, interval=0.1, what=f"{want} finalize notifications")
    finally:
        sub.close()
    return list(seen.values())


def test_upload_verifies_every_object_and_writes_the_manifest_last(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = stack.bucket("staging")
    probe = _probe(stack, clients)
    folder = _study(tmp_path, batch_name, big=True)
    local = _local(folder)

    report = _upload(folder, bucket)

    assert report.sealed and report.failures == []
    assert (report.uploaded, report.unchanged) == (len(local), 0)
    assert report.bytes_uploaded == sum(size for size, _ in local.values())
    objects = _bucket_objects(clients, bucket, batch_name)
    manifest_blob = objects.pop(f"{batch_name}/{MANIFEST_NAME}")
    assert {name: (b.size, b.md5_hash) for name, b in objects.items()} == {
        f"{batch_name}/{rel}": value for rel, value in local.items()
    }
    manifest = _manifest(clients, bucket, batch_name)
    assert manifest.folder == batch_name and manifest.count == len(local)
    assert manifest.total_bytes == sum(b.size for b in objects.values())
    for entry in manifest.objects:  # exactly what the bucket reports for each object
        blob = objects[entry.name]
        assert (entry.size, entry.md5, entry.generation) == (blob.size, blob.md5_hash, str(blob.generation))
    assert manifest_blob.content_type == "application/json"
    assert report.manifest_generation == str(manifest_blob.generation)
    # Written last: the greatest generation and update time of the folder, and its notification says so.
    assert all(manifest_blob.generation > b.generation for b in objects.values())
    assert all(manifest_blob.updated >= b.updated for b in objects.values())
    notes = _finalized(stack, probe, batch_name, want=len(local) + 1)
    last = max(notes, key=lambda m: int(m.attributes["objectGeneration"]))
    assert is_manifest(last.attributes["objectId"])
    assert {m.attributes["objectId"] for m in notes} == {*objects, manifest_blob.name}
    latest = max(json.loads(m.data)["updated"] for m in notes)
    assert json.loads(last.data)["updated"] == latest


def test_rerun_uploads_nothing_and_writes_a_new_manifest(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = stack.bucket("staging")
    folder = _study(tmp_path, batch_name)
    first = _upload(folder, bucket)
    before = {n: b.generation for n, b in _bucket_objects(clients, bucket, batch_name).items()}

    again = _upload(folder, bucket)

    assert again.sealed and (again.uploaded, again.unchanged) == (0, first.uploaded)
    assert again.bytes_uploaded == 0
    after = {n: b.generation for n, b in _bucket_objects(clients, bucket, batch_name).items()}
    seal = f"{batch_name}/{MANIFEST_NAME}"
    assert after[seal] > before.pop(seal)
    assert {n: g for n, g in after.items() if n != seal} == before  # no data object rewritten
    assert _manifest(clients, bucket, batch_name).objects == first.manifest.objects  # type: ignore[union-attr]


def test_changed_and_new_files_are_uploaded_on_rerun(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = stack.bucket("staging")
    folder = _study(tmp_path, batch_name)
    _upload(folder, bucket)
    changed = folder / "series_1" / "IMG_0001.dcm"
    changed.write_bytes(changed.read_bytes() + b"\0\0")
    (folder / "series_2" / "added.dcm").write_bytes(b"added later")
    (folder / "series_2" / "IMG_0003.dcm").unlink()  # in the bucket, no longer local: left alone, not listed
    before = _bucket_objects(clients, bucket, batch_name)

    report = _upload(folder, bucket)

    assert report.sealed and report.uploaded == 2 and report.unchanged == len(before) - 3
    assert report.not_local == 1
    now = _bucket_objects(clients, bucket, batch_name)
    name = f"{batch_name}/series_1/IMG_0001.dcm"
    assert now[name].md5_hash == _md5(changed.read_bytes()) and now[name].generation > before[name].generation
    manifest = _manifest(clients, bucket, batch_name)
    assert manifest.entry(name).generation == str(now[name].generation)  # type: ignore[union-attr]
    assert manifest.entry(f"{batch_name}/series_2/added.dcm") is not None
    assert manifest.entry(f"{batch_name}/series_2/IMG_0003.dcm") is None
    assert f"{batch_name}/series_2/IMG_0003.dcm" in now
    assert manifest.count == len(now) - 2  # neither the manifest nor the object with no local file


def test_a_failed_file_leaves_the_folder_unsealed_until_a_clean_rerun(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = stack.bucket("staging")
    folder = _study(tmp_path, batch_name)
    missing = tmp_path / "on an unmounted disk.dcm"
    (folder / "series_2" / "IMG_9999.dcm").symlink_to(missing)  # unreadable: its target is gone

    report = _upload(folder, bucket)

    assert not report.sealed and report.failures == [("series_2/IMG_9999.dcm", "broken symbolic link")]
    objects = _bucket_objects(clients, bucket, batch_name)
    assert f"{batch_name}/{MANIFEST_NAME}" not in objects
    assert len(objects) == report.uploaded == 6  # the readable files are there; only the seal is missing
    missing.write_bytes(b"found again")
    fixed = _upload(folder, bucket)
    assert fixed.sealed and (fixed.uploaded, fixed.unchanged) == (1, 6)
    assert _manifest(clients, bucket, batch_name).count == 7


def test_a_bucket_that_refuses_the_upload_writes_no_manifest(
    stack: Any, tmp_path: Path, batch_name: str
) -> None:
    folder = _study(tmp_path, batch_name)
    report = _upload(folder, f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    assert not report.sealed and report.uploaded == 0
    assert report.failures and all("HTTP 404" in reason for _, reason in report.failures)


def _cli(stack: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendit.cli", "upload", *args],
        env={**os.environ, **stack.stack_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_uploads_several_folders_with_spaces_and_unicode(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    bucket = stack.bucket("staging")
    names = [f"Étude ü {batch_name}", f"{batch_name} second"]
    for name in names:
        _study(tmp_path, name)
    (tmp_path / names[0] / "série 1").mkdir()
    (tmp_path / names[0] / "série 1" / "IMG 1 ü.dcm").write_bytes(b"x")

    done = _cli(stack, *(str(tmp_path / n) for n in names), "--workers", "3")

    assert done.returncode == EXIT_OK, done.stderr
    assert "2 of 2 folders sealed" in done.stdout and done.stderr == ""  # no progress bar off a terminal
    for name in names:
        manifest = _manifest(clients, bucket, name)
        objects = _bucket_objects(clients, bucket, name)
        assert manifest.folder == name and manifest.names() == set(objects) - {manifest.name}
    assert f"{names[0]}/série 1/IMG 1 ü.dcm" in _manifest(clients, bucket, names[0]).names()


def test_cli_failure_exits_non_zero_and_says_not_sealed(
    stack: Any, clients: Any, tmp_path: Path, batch_name: str
) -> None:
    folder = _study(tmp_path, batch_name)
    (folder / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")

    done = _cli(stack, str(folder), "--quiet")

    assert done.returncode == EXIT_FAILED
    assert "failed: dangling.dcm: broken symbolic link" in done.stdout and "NOT sealed" in done.stdout
    assert f"{batch_name}/{MANIFEST_NAME}" not in _bucket_objects(
        clients, stack.bucket("staging"), batch_name
    )
    usage = _cli(stack, str(tmp_path / "no such folder"))
    assert usage.returncode == 2 and "not a folder" in usage.stderr


def test_cli_shows_a_progress_bar_on_a_terminal(stack: Any, tmp_path: Path, batch_name: str) -> None:
    import fcntl
    import pty
    import struct
    import termios

    folder = _study(tmp_path, batch_name, big=True)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 wide
    process = subprocess.Popen(
        [sys.executable, "-m", "sendit.cli", "upload", str(folder)],
        env={**os.environ, **stack.stack_env()},
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read while it writes: a full terminal buffer would block the upload
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = process.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == EXIT_OK and "sealed" in out
    assert batch_name in shown and "B/s" in shown and "files]" in shown  # label, rate, files done
    assert "<" in shown  # tqdm's elapsed<remaining (the ETA)
