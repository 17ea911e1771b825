"""The de-identification engine (PS3.15 profile and deid recipes, keyed identities, one pass)."""
