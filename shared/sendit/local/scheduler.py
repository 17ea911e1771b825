"""The local stack's Cloud Scheduler: publish a tick to the sweep topic every N seconds.

    python -m sendit.local.scheduler --project P --topic sendit-sweep --every 1

In the cloud a ``google_cloud_scheduler_job`` with a Pub/Sub target publishes to the same topic (the cron
schedule ``var.sweep_schedule``, every minute by default); the sweep function cannot tell the two apart.
It prints one line when it starts (the stack's readiness signal) and runs until it is stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendit.local.scheduler", description=__doc__)
    parser.add_argument("--project", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--every", type=float, required=True, help="seconds between ticks")
    args = parser.parse_args(argv)
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(args.project, args.topic)
    print(json.dumps({"severity": "INFO", "message": "scheduler started", "every": args.every}), flush=True)
    next_tick = time.monotonic()
    while True:
        body = json.dumps({"tick": datetime.now(UTC).isoformat()}).encode()
        try:
            publisher.publish(topic, body, kind="sweep").result(timeout=30)
        except Exception as exc:  # the emulator restarting: the next tick tries again
            print(
                json.dumps(
                    {"severity": "WARNING", "message": "tick not published", "error": type(exc).__name__}
                )
            )
        next_tick += args.every
        time.sleep(max(0.0, next_tick - time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
