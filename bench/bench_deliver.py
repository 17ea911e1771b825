"""What the DICOMweb target costs a delivery, side by side with the bucket alone, in one run.

On one local stack (Orthanc with its DICOMweb plugin included) ``ROUNDS`` rounds each deliver three
fresh batches of ``SENDIT_BENCH_DELIVER_FILES`` (default 120) small CT instances in 4 series, one per
target set: ``bucket``, ``bucket,dicomweb`` and ``dicomweb``, in a rotating order so that drift on a noisy
machine falls on every target alike. Each delivery runs in this process (``stages.deliver.deliver_batch``,
the function's own code, with the target set in its settings); the batch is moved to SENDING by the store
exactly as ``sendit send`` does, without a deliver message, so the stack's deliver function never races
it. Then each batch is resent as an operator would: its folder uploaded again (new generations, the same
pseudonyms), complete again, delivered again; the DICOMweb target's QIDO-RS check finds every instance
present and stores nothing, the bucket target finds every object with the same MD5.

Prints the median seconds per target set and the ratios to the bucket alone, and the redelivery's.

    python -m bench deliver
    SENDIT_BENCH_DELIVER_FILES=300 python -m bench deliver
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_pipeline import _payloads, _upload, _wait

ROUNDS = 3
TARGETS = (("bucket",), ("bucket", "dicomweb"), ("dicomweb",))


@dataclasses.dataclass
class Batch:
    folder: str
    payloads: list[tuple[str, bytes]]
    id: str = ""
    uploads: int = 0


def _upload_batch(stack: Any, settings: Any, batch: Batch) -> None:
    """Upload (again) the batch's folder through the stack and wait until it is complete."""
    from sendit import naming
    from sendit.clients import Clients

    _upload(stack.project, settings.staging_bucket, batch.folder, batch.payloads)
    batch.uploads += 1
    batch.id = naming.batch_id(settings.secret_key, settings.staging_bucket, batch.folder)
    n = len(batch.payloads)
    _wait(Clients(stack.project).firestore, batch.id, n * batch.uploads, timeout=120 + n)


def _deliver(ctx: Any, batch: str) -> tuple[float, Any]:
    from sendit.stages import deliver
    from sendit.store import deliveries

    delivery_id = uuid.uuid4().hex
    decision = deliveries.request_send(ctx.store, batch_id=batch, delivery_id=delivery_id)
    assert decision.outcome == "queued", decision
    began = time.monotonic()
    result = deliver.deliver_batch(ctx, batch, delivery_id)
    return time.monotonic() - began, result


def main() -> int:
    os.environ.setdefault("MESSAGELEVEL", "QUIET")
    from sendit.app.context import Context
    from sendit.clients import Clients
    from sendit.config import Settings
    from sendit.local.stack import LocalStack

    n = int(os.environ.get("SENDIT_BENCH_DELIVER_FILES", "120"))
    saved = dict(os.environ)
    timings: dict[tuple[str, ...], list[float]] = {t: [] for t in TARGETS}
    resends: dict[tuple[str, ...], list[float]] = {t: [] for t in TARGETS}
    stored = present = 0
    with tempfile.TemporaryDirectory(prefix="sendit-bench-") as tmp:
        stack = LocalStack(Path(tmp), function_env={"SENDIT_CLEANUP": "never"})
        stack.start()
        try:
            os.environ.update(stack.settings_env())
            base = Settings.from_env(stack.settings_env())
            clients = Clients(stack.project)
            contexts = {
                t: Context(dataclasses.replace(base, delivery_targets=t, cleanup="never"), clients)
                for t in TARGETS
            }
            study = 7_000_000 + uuid.uuid4().int % 1_000_000
            for round_ in range(ROUNDS):
                order = TARGETS[round_ % 3 :] + TARGETS[: round_ % 3]
                prepared = {}
                for t in order:
                    study += 1
                    folder = f"D{uuid.uuid4().hex[:10]}"
                    prepared[t] = Batch(folder, _payloads(folder, n, study))
                    _upload_batch(stack, base, prepared[t])
                for t in order:
                    seconds, result = _deliver(contexts[t], prepared[t].id)
                    timings[t].append(seconds)
                    stored += result.dicomweb_stored
                for t in order:
                    _upload_batch(stack, base, prepared[t])  # the resend: the same folder again
                for t in order:
                    seconds, result = _deliver(contexts[t], prepared[t].id)
                    resends[t].append(seconds)
                    present += result.dicomweb_present
                    stored += result.dicomweb_stored
        finally:
            stack.stop()
            os.environ.clear()
            os.environ.update(saved)
    median = {t: statistics.median(v) for t, v in timings.items()}
    again = {t: statistics.median(v) for t, v in resends.items()}
    bucket = median[("bucket",)]
    print(f"delivery of {n} instances (4 series) per batch, {ROUNDS} rounds, targets in rotating order")
    print(f"{'targets':<18} {'median s':>9} {'vs bucket':>10} {'resend s':>9} {'resend vs first':>16}")
    for t in TARGETS:
        print(
            f"{','.join(t):<18} {median[t]:>9.2f} {median[t] / bucket:>9.2f}x "
            f"{again[t]:>9.2f} {again[t] / median[t]:>15.2f}x"
        )
    want = 2 * ROUNDS * n  # two of the three target sets store on the DICOMweb server
    print(f"instances stored over STOW-RS: {stored} (expected {want}); already present on resend: {present}")
    return 0 if stored == want and present == want else 1


if __name__ == "__main__":
    raise SystemExit(main())
