"""Generated stubs of proto/raee/oip (scripts/gen_protos.py)."""
