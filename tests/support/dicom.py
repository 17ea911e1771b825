"""Synthetic DICOM for tests and the demo: realistic CT/MR/US headers with planted identifiers.

Every planted identifier is listed in ``PLANTED`` so tests can assert that none survives anywhere
(destination objects, BigQuery rows, logs, HTTP bodies). The demo uses the same generator through
``sendit.local.samples``.
"""

from __future__ import annotations

from sendit.local.samples import PLANTED, StudySpec, make_instance, write_study

__all__ = ["PLANTED", "StudySpec", "make_instance", "write_study"]
