"""The HTTP front door, beside gRPC on the same engines: LibreTranslate's API, a JSON mirror of gRPC's
Translate, and a translation page. ``--http-port`` turns it on (see docs/http.md)."""
