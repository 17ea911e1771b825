"""One module per Cloud Function, in pipeline order: anonymize, send, deliver, dead_letter.

Only ``sendit.app.runtime`` imports these; a stage imports downward (store, delivery, naming, errors).
"""
