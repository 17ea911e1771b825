"""The `sendit` command: anonymize | upload | status | send | reprocess | dead-letters | metrics.

Each subcommand lives in a module of this package; this file only wires argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "anonymize": (
        "sendit.cli.anonymize",
        "de-identify a local folder with exactly the code the function runs",
    ),
    "upload": (
        "sendit.cli.upload",
        "upload study folders to the staging bucket and seal each with a manifest",
    ),
    "status": ("sendit.cli.remote", "show batch status from the status API"),
    "send": ("sendit.cli.remote", "queue ready batches for delivery"),
    "reprocess": (
        "sendit.cli.reprocess",
        "re-run the FAILED (--skipped, --all) files of a batch with the current recipe and settings",
    ),
    "dead-letters": (
        "sendit.cli.dead_letters",
        "list the dead-lettered messages kept for replay; --replay them once the cause is fixed",
    ),
    "metrics": ("sendit.cli.remote", "per-batch metrics (the original export_metrics)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sendit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(name, command_parser)
        command_parser.set_defaults(_module=module)
    args = parser.parse_args(argv)
    return int(args._module.run(args.command, args))


if __name__ == "__main__":
    sys.exit(main())
