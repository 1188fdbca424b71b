"""Generated stubs of proto/raee/v1 (scripts/gen_protos.py)."""
