"""Firestore documents of sendit, one module per kind of document (contract: docs/state.md)."""
