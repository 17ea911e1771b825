"""`python -m sendit.local up | down | demo` (what `make up`, `make down` and `make demo` run)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sendit.local.stack import LocalStack, StackError, stop_from_pids

DEFAULT_DIR = Path(".local")


def up(workdir: Path) -> int:
    if (workdir / "stack.pids").exists():
        print(f"a stack is already running ({workdir}/stack.pids); run `make down` first", file=sys.stderr)
        return 1
    began = time.monotonic()
    stack = LocalStack(workdir.resolve())
    try:
        stack.start()
    except StackError as exc:
        print(f"local stack failed to start: {exc}", file=sys.stderr)
        return 1
    print(f"local stack up in {time.monotonic() - began:.1f} s; endpoints in {workdir}/stack.env")
    for service in stack.services:
        print(f"  {service.name:<22} pid {service.pid}")
    print(f"upload a folder:  {stack.stack_env()['SENDIT_UPLOAD_CMD']} FOLDER")
    print(f"Orthanc Explorer: {stack.orthanc_url}/app/explorer.html")
    return 0


def down(workdir: Path) -> int:
    stopped = stop_from_pids(workdir)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendit.local", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "demo"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="stack working directory (default .local)"
    )
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.dir)
    if args.command == "down":
        return down(args.dir)
    from sendit.local import demo

    return demo.run(args.dir)


if __name__ == "__main__":
    sys.exit(main())
