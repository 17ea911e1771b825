"""What de-identifying one file produced: the contract between the engine and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["ANONYMIZED", "SKIPPED", "FAILED"]


@dataclass(frozen=True)
class Pseudonyms:
    """Pseudonymous identifiers of one de-identified instance (safe to log and store anywhere)."""

    patient_id: str
    study_uid: str
    series_uid: str
    instance_uid: str
    accession: str | None = None


@dataclass
class Outcome:
    """Result of ``Engine.process``.

    ``state`` is ANONYMIZED (``ids`` and ``row`` set, the clean file written to the output),
    SKIPPED (filtered: ``reason`` says why, nothing written) or FAILED (not DICOM, truncated, empty,
    unreadable: ``reason`` says why, nothing written). ``reason`` never quotes a header value.
    ``row`` holds the BigQuery columns the engine knows (see ``sendit/schema/dicom.json``): everything
    except batch_id, collection, uri, size_bytes, md5 and sent_at, which delivery adds.
    ``residual_removed`` counts the file's own identifying values found in text the recipe kept (and cut
    out of it) by the residual-identifier check: never the values themselves.
    """

    state: State
    reason: str | None = None
    ids: Pseudonyms | None = None
    row: dict[str, Any] = field(default_factory=dict)
    study_date: str | None = None  # shifted, YYYYMMDD, for the batch's per-StudyDate counts
    bytes_written: int = 0
    residual_removed: int = 0  # hits of the residual-identifier check cut out of retained text (a count only)
