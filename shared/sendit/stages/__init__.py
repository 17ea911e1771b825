"""One module per Cloud Function, in pipeline order: anonymize, send, deliver, dead_letter, sweep.

Only ``sendit.app.runtime`` imports these; a stage imports downward (completion, store, delivery, naming,
errors).
"""
