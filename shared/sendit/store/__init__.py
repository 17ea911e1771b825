"""Firestore state behind one convention: every function takes a ``Store`` first, keyword arguments after.

``vocabulary`` names the states, ``base`` holds ``Store``; ``files`` (the anonymize side), ``batches``
(opening and finalizing a batch), ``deliveries`` (send and deliver) write; ``queries`` reads for the
status API. The document contract is docs/state.md.
"""
