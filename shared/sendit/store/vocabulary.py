"""The one definition of every state name (docs/state.md).

A file: RECEIVED (claimed, in progress) -> ANONYMIZED | SKIPPED | FAILED, then ANONYMIZED -> SENT.
A batch: QUEUE (first file seen) -> PROCESSING -> DONEPROCESSING | EMPTY -> SENDING -> SENT.
``StrEnum`` members are ``str`` (each name equals its value, so a member and its text hash and compare
alike): they are written to Firestore, JSON and dict keys as they are.
"""

from __future__ import annotations

from enum import StrEnum


class FileState(StrEnum):
    RECEIVED = "RECEIVED"
    ANONYMIZED = "ANONYMIZED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    SENT = "SENT"


class BatchState(StrEnum):
    QUEUE = "QUEUE"
    PROCESSING = "PROCESSING"
    DONEPROCESSING = "DONEPROCESSING"
    EMPTY = "EMPTY"
    SENDING = "SENDING"
    SENT = "SENT"


# A file in one of these states is done with the file step (a redelivery is a duplicate).
TERMINAL = frozenset({FileState.ANONYMIZED, FileState.SKIPPED, FileState.FAILED, FileState.SENT})
# A new file in a batch in one of these states (re)opens it: status -> PROCESSING. A delivery running
# (SENDING) finishes without setting SENT when it finds its batch reopened (store.deliveries).
REOPENABLE = frozenset(
    {BatchState.QUEUE, BatchState.DONEPROCESSING, BatchState.EMPTY, BatchState.SENDING, BatchState.SENT}
)
# A batch in one of these states still has files or a delivery moving: its counts are derived on read.
LIVE = frozenset({BatchState.QUEUE, BatchState.PROCESSING, BatchState.SENDING})
# A batch in one of these states has every file terminal (an operator's watch may stop).
SETTLED = frozenset({BatchState.DONEPROCESSING, BatchState.EMPTY, BatchState.SENT})

MAX_ERRORS = 50  # errors kept on a batch document
