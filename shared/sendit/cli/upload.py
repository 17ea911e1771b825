"""`sendit upload`: upload study folders to the staging bucket and seal each with a manifest.

The command belongs to ``sendit.upload`` (with ``sendit.manifest``); this module only plugs it into the CLI.
"""

from __future__ import annotations

from sendit.upload import add_arguments, run

__all__ = ["add_arguments", "run"]
