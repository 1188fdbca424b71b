"""raee.v1 stubs, copied by clients/python/gen_stubs.py."""
