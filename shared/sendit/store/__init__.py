"""Firestore state behind one convention: every function takes a ``Store`` first, keyword arguments after.

``vocabulary`` names the states, ``base`` holds ``Store``; ``files`` (the anonymize side), ``batches``
(opening a batch, settling it at completion), ``deliveries`` (send and deliver) write; ``tally`` (the
per-batch sharded counters) and ``manifests`` (a sealed batch's listing) are the batch's subcollections;
``queries`` reads for the status API. The document contract is docs/state.md.
"""
