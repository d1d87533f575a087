"""TLS and mTLS from the `[tls]` config: server credentials for gRPC, an SSL context for HTTP.

gRPC's Python server cannot ask for an optional client certificate: with a
`client_ca_file`, every client must present one signed by that CA
(`require_client_cert = true`; the config check says so). A client that
presents one may then authenticate by it alone (RFC 8705 tls_client_auth),
and the access tokens it gets are bound to it (`cnf.x5t#S256`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rotor.config import TlsConfig


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM files of the [tls] table, read once at start."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    @classmethod
    def load(cls, tls: TlsConfig) -> TlsMaterial | None:
        """None when TLS is off (no cert_file); OSError naming the file that cannot be read."""
        if not tls.cert_file:
            return None
        return cls(
            _read(tls.cert_file, "cert_file"),
            _read(tls.key_file, "key_file"),
            _read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file else None,
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self, tls: TlsConfig) -> ssl.SSLContext:
        """For the HTTP side port: the same certificate, and the same client CA when there is one."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if self.client_ca is not None:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _read(path: str, name: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"tls.{name}: cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise OSError(f"tls.{name}: {path} is not PEM")
    return data


@dataclass(frozen=True)
class PeerCertificate:
    """The client certificate gRPC verified for a call: its URI SANs and its RFC 8705 thumbprint."""

    uris: tuple[str, ...]
    thumbprint: str  # base64url(SHA-256(DER)): the cnf x5t#S256 of tokens bound to it


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The verified client certificate of a call over mTLS, or None."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    if not pems:
        return None
    return _described(pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode())


def peer_certificate_der(der: bytes | None) -> PeerCertificate | None:
    """The client certificate an HTTPS connection verified (DER, from the ssl object), or None."""
    if not der:
        return None
    return _described(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))


@functools.lru_cache(maxsize=1024)
def _described(pem: bytes) -> PeerCertificate:
    """A certificate's URI SANs and thumbprint, parsed once per certificate (clients call again and again)."""
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(names.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return PeerCertificate(uris, thumbprint)
