"""TLS for the gRPC port: the server's certificate and key, and for mutual TLS the CA that signs clients'.

The files are read at start (a missing or mismatched file fails the start, naming it) and again on SIGHUP
(:meth:`ServerCertificates.reload`): grpc asks for the newest material at every new handshake, so new
connections get the new certificates while established ones carry on. A reload that fails (a file half
written, a key that does not match) is logged and keeps the certificates in use.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """A TLS file that cannot be used; the message names the setting and the file."""


@dataclass(frozen=True)
class _Material:
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


class ServerCertificates:
    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._material = self._load()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()  # grpc's handshakes ask from its own threads

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._material), self._newest, require_client_authentication=self.mutual
        )

    def reload(self) -> bool:
        """Re-read the files (SIGHUP); True when the new material is in use for new connections."""
        try:
            material = self._load()
        except TLSConfigError as exc:
            log.error("TLS certificates not reloaded, the ones in use stay: %s", exc)
            return False
        with self._lock:
            self._material = material
            self._pending = self._configuration(material)
        log.info("TLS certificates reloaded from %s (new connections use them)", self.cert)
        return True

    def _newest(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: new material once after a reload, else None (keep what you have)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _load(self) -> _Material:
        chain, key = _read("tls_cert", self.cert), _read("tls_key", self.key)
        ca = _read("tls_client_ca", self.client_ca) if self.client_ca is not None else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:  # the same checks a handshake would make, now, with a message that names the files
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, ValueError) as exc:
            raise TLSConfigError(f"tls_cert {self.cert} and tls_key {self.key} are not a certificate chain and "
                                 f"its private key ({exc})") from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(self.client_ca)
            except (ssl.SSLError, ValueError) as exc:
                raise TLSConfigError(f"tls_client_ca {self.client_ca} holds no CA certificate ({exc})") from None
        return _Material(chain, key, ca)

    def _configuration(self, material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.private_key, material.certificate_chain)], root_certificates=material.client_ca
        )


__all__ = ["ServerCertificates", "TLSConfigError"]
