"""The status dashboard in headless Chromium: what a person sees as a batch moves from ready to sent."""

from __future__ import annotations

import html
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support import sendkit as kit
from support.dicom import StudySpec

pytestmark = [pytest.mark.stack, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        script = REPO / "scripts" / "install-debian-packages.sh"
        subprocess.run(["bash", str(script)], check=True, timeout=600)
        path = shutil.which("chromium")
    assert path, "chromium could not be installed"
    return path


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "chromium-profile"
    directory.mkdir()
    yield directory


def _browser(chromium: str, profile: Path, *extra: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *extra,
    ]


def dump_dom(chromium: str, profile: Path, url: str) -> str:
    done = subprocess.run(
        [*_browser(chromium, profile, "--dump-dom"), url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visible_text(dom: str) -> str:
    """The text a person reads: tags, styles and head removed, entities decoded, spaces collapsed."""
    body = re.sub(r"(?s)<head>.*?</head>", " ", dom)
    body = re.sub(r"(?s)<style.*?</style>", " ", body)
    text = html.unescape(re.sub(r"<[^>]+>", " ", body))
    return re.sub(r"\s+", " ", text).strip()


def row_text(dom: str, batch_id: str) -> str:
    match = re.search(rf'(?s)<tr id="batch-{batch_id}"[^>]*>(.*?)</tr>', dom)
    assert match, f"no dashboard row for {batch_id}"
    return visible_text(match.group(1))


def test_dashboard_shows_the_batch_moving_to_sent(
    stack: Any, settings: Any, clients: Any, chromium: str, profile: Path, tmp_path: Path, batch_name: str
) -> None:
    ctx = kit.context(settings, clients)
    spec = StudySpec(modality="CT", series=1, instances=4, study_index=random.randrange(10**9))
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, [spec], extra_files=[("FAILED", "not DICOM")])
    url = stack.function_url("status") + "/"

    dom = dump_dom(chromium, profile, url)
    page = visible_text(dom)
    assert page.startswith("sendit batches") and "auto-refresh every 5 s" in page
    row = row_text(dom, seeded.batch_id)
    # id, status, progress 5/5 terminal files, counts anonymized 4 skipped 0 failed 1 sent 0, error count 1
    assert re.match(rf"{seeded.batch_id} {batch_name} DONEPROCESSING 5/5 4 0 1 0 ", row), row
    assert row.endswith(" 1")
    assert '<meta http-equiv="refresh" content="5">' in dom
    # When its clean files expire: the first one's time plus the retention (30 days), not flagged yet.
    retention = timedelta(days=settings.processing_retention_days)
    expires = kit.batch_doc(ctx, seeded.batch_id)["first_clean_at"] + retention
    assert f" {expires:%Y-%m-%d %H:%M:%S} UTC " in row and "expir" not in row

    code, _ = kit.post(stack.function_url("send"), {"batches": [seeded.batch_id]})
    assert code == 202
    kit.wait_for(lambda: kit.batch_status(stack.function_url("status"), seeded.batch_id) == "SENT", 60)

    dom = dump_dom(chromium, profile, url)
    row = row_text(dom, seeded.batch_id)
    assert re.match(rf"{seeded.batch_id} {batch_name} SENT 5/5 0 0 1 4 ", row), row
    assert " UTC 4 1" in row  # sent at ..., 4 rows delivered, 1 error
    assert f"{expires:%Y-%m-%d %H:%M:%S}" not in row  # sent: nothing left to expire

    # The batch page, reached by the link on the overview: files with states and pseudonyms only.
    assert f'href="batches/{seeded.batch_id}"' in dom
    detail = dump_dom(chromium, profile, f"{url}batches/{seeded.batch_id}")
    text = visible_text(detail)
    assert text.startswith(f"sendit batch {seeded.batch_id}")
    assert "status SENT" in text and "failed=1" in text and "sent=4" in text
    assert "deliveries" in text and "not DICOM" in text
    sent = [f for f in kit.file_docs(ctx, seeded.batch_id) if f["state"] == "SENT"]
    for f in sent:
        assert f["name_hash"] in text and f["ids"]["instance_uid"] in text and f["ids"]["patient_id"] in text
    # Folder and object names for the staging-side operators, in their own cells and nowhere else.
    assert seeded.folder in visible_text(dom) and "IMG_" in text
    for page in (dom, detail):
        page_text = visible_text(kit.without_name_cells(page))
        assert seeded.folder not in page_text and "IMG_" not in page_text and not kit.planted_in(page_text)

    shot = tmp_path / "dashboard.png"
    done = subprocess.run(
        [*_browser(chromium, profile, f"--screenshot={shot}", "--window-size=1280,600"), url],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0 and shot.stat().st_size > 5000


def test_dashboard_flags_a_batch_whose_clean_files_expire_within_a_week(
    stack: Any, settings: Any, clients: Any, chromium: str, profile: Path, tmp_path: Path, batch_name: str
) -> None:
    ctx = kit.context(settings, clients)
    spec = StudySpec(modality="CT", series=1, instances=2, study_index=random.randrange(10**9))
    seeded = kit.seed_batch(ctx, tmp_path, batch_name, [spec])
    retention = settings.processing_retention_days
    old = kit.age_batch(ctx, seeded, days=retention - 4)  # 4 days left
    url = stack.function_url("status") + "/"
    dom = dump_dom(chromium, profile, url)
    assert f'<tr id="batch-{seeded.batch_id}" class="expiring">' in dom
    row = row_text(dom, seeded.batch_id)
    assert f" {old + timedelta(days=retention):%Y-%m-%d %H:%M:%S} UTC expiring soon" in row, row
    assert "expiring within 7 days: send, or its clean files are deleted" in visible_text(dom)
    detail = visible_text(dump_dom(chromium, profile, f"{url}batches/{seeded.batch_id}"))
    assert "clean files expire" in detail and "expiring soon" in detail
