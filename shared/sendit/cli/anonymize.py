"""`sendit anonymize`: de-identify a local folder with exactly the code the function runs.

The command itself belongs to the engine (``sendit.deid.offline``); this module only plugs it into the CLI.
"""

from __future__ import annotations

from sendit.deid.offline import add_arguments, run

__all__ = ["add_arguments", "run"]
