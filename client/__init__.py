"""mtserve.client: gRPC clients (sync and asyncio) and the command-line tools. Never imports torch."""
