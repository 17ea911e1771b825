"""Per-instance wiring: ``context`` (what every handler gets) and ``runtime`` (the dispatch that
``functions/main.py``, and nothing else, imports)."""
