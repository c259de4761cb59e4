"""mtserve.server: the gRPC service, the continuous-batching engine and its metrics."""
