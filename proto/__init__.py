"""mtserve.proto: the public API (.proto files, package mtserve.v1)."""
