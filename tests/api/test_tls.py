"""TLS and mTLS: an encrypted API, clients authenticated by certificate, tokens bound to it (RFC 8705)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import rotor_client
from grpc import aio
from rotor.config import ConfigError, TlsConfig, config_from_dict
from rotor_client import CertificateMismatch, Verifier
from rotor_client.verifier import certificate_thumbprint

from .certs import CertificateAuthority, Issued
from .conftest import MakeRotor
from .support import AUDIENCE, ISSUER, Rotor, assert_error, jwt_part

SAN = "spiffe://example.org/orders"


class Pki:
    """A CA, the server's certificate, and client certificates, written where the server reads them."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority()
        self.folder = folder
        self.server_cert, self.server_key = self.ca.server().write(folder, "server")
        (folder / "ca.pem").write_bytes(self.ca.pem)
        self.client = self.ca.client(SAN)
        self.stranger = self.ca.client("spiffe://example.org/nobody")

    def tls(self, mtls: bool = True) -> TlsConfig:
        return TlsConfig(
            cert_file=str(self.server_cert),
            key_file=str(self.server_key),
            client_ca_file=str(self.folder / "ca.pem") if mtls else "",
            require_client_cert=mtls,
        )

    def channel(self, rotor: Rotor, client: Issued | None) -> aio.Channel:
        key, cert = (client.key_pem, client.cert_pem) if client else (None, None)
        return aio.secure_channel(rotor.address, grpc.ssl_channel_credentials(self.ca.pem, key, cert))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def issue(channel: aio.Channel, metadata: Any = ()) -> rotor_client.TokenResponse:
    stub = rotor_client.TokenServiceStub(channel)
    return await stub.Issue(rotor_client.IssueRequest(audience=[AUDIENCE]), metadata=metadata, timeout=30)


async def test_with_tls_the_api_is_encrypted_and_plaintext_is_refused(
    make_rotor: MakeRotor, pki: Pki
) -> None:
    """A TLS server answers a TLS client; a plaintext client cannot talk to it."""
    rotor = await make_rotor(tls=pki.tls(mtls=False))
    svc = await rotor.add_client("svc")
    async with pki.channel(rotor, None) as channel:
        issued = await issue(channel, svc.metadata)
    assert "cnf" not in jwt_part(issued.access_token, 1), "no client certificate: a plain bearer token"
    async with aio.insecure_channel(rotor.address) as plain:
        with pytest.raises(aio.AioRpcError) as refused:
            await issue(plain, svc.metadata)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_authenticates_and_binds_the_token(
    make_rotor: MakeRotor, pki: Pki
) -> None:
    """Over mTLS, a registered SAN authenticates with no secret; the token carries cnf.x5t#S256 of the cert."""
    rotor = await make_rotor(tls=pki.tls())
    await rotor.add_client("orders", cert_san=SAN)
    async with pki.channel(rotor, pki.client) as channel:
        issued = await issue(channel)  # no Basic credentials
        keyset = await rotor_client.TokenServiceStub(channel).GetKeySet(
            rotor_client.GetKeySetRequest(), timeout=30
        )
    claims = jwt_part(issued.access_token, 1)
    assert claims["client_id"] == "orders"
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(pki.client.cert_pem)}
    verifier = Verifier.from_jwks(keyset.jwks_json, issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(issued.access_token, peer_certificate=pki.client.cert_pem).client_id == "orders"
    with pytest.raises(CertificateMismatch):
        verifier.verify(issued.access_token, peer_certificate=pki.stranger.cert_pem)
    with pytest.raises(CertificateMismatch):
        verifier.verify(issued.access_token)


async def test_basic_credentials_over_mtls_bind_the_token_to_the_presented_certificate(
    make_rotor: MakeRotor, pki: Pki
) -> None:
    """A client that sends Basic credentials over mTLS is that client, and its token is bound to the cert."""
    rotor = await make_rotor(tls=pki.tls())
    svc = await rotor.add_client("svc")
    async with pki.channel(rotor, pki.stranger) as channel:
        issued = await issue(channel, svc.metadata)
    claims = jwt_part(issued.access_token, 1)
    assert claims["client_id"] == "svc"
    assert claims["cnf"]["x5t#S256"] == certificate_thumbprint(pki.stranger.cert_pem)


async def test_an_unregistered_certificate_is_anonymous_not_a_client(make_rotor: MakeRotor, pki: Pki) -> None:
    """A certificate no client is registered for cannot Issue (INVALID_CLIENT naming the SAN), but may watch."""
    rotor = await make_rotor(tls=pki.tls())
    async with pki.channel(rotor, pki.stranger) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await issue(channel)
        info = assert_error(refused.value, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
        assert info is not None and "spiffe://example.org/nobody" in (refused.value.details() or "")
        stream = rotor_client.TokenServiceStub(channel).WatchKeyRotations(
            rotor_client.WatchKeyRotationsRequest()
        )
        first = await stream.read()
        assert first.type == rotor_client.KeyEventType.Value("KEY_EVENT_TYPE_SNAPSHOT")
        stream.cancel()


async def test_a_disabled_clients_certificate_is_refused(make_rotor: MakeRotor, pki: Pki) -> None:
    """Disabling a client stops its certificate at once."""
    from rotor.core.clients import set_disabled

    rotor = await make_rotor(tls=pki.tls())
    await rotor.add_client("orders", cert_san=SAN)
    await set_disabled(rotor.server.store, rotor.server.clock, "orders", True)
    async with pki.channel(rotor, pki.client) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await issue(channel)
    assert_error(refused.value, grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")


async def test_without_a_client_certificate_mtls_refuses_the_connection(
    make_rotor: MakeRotor, pki: Pki
) -> None:
    """require_client_cert: a client without a certificate does not get in."""
    rotor = await make_rotor(tls=pki.tls())
    svc = await rotor.add_client("svc")
    async with pki.channel(rotor, None) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await issue(channel, svc.metadata)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_http_side_port_serves_tls_with_the_same_certificates(
    make_rotor: MakeRotor, pki: Pki
) -> None:
    """The JWKS over HTTPS, with the client certificate mTLS asks for."""
    rotor = await make_rotor(tls=pki.tls(), http_listen="127.0.0.1:0")
    context = ssl.create_default_context(cadata=pki.ca.pem.decode())
    cert, key = pki.client.write(pki.folder, "client")
    context.load_cert_chain(cert, key)
    url = f"https://127.0.0.1:{rotor.server.http_port}/.well-known/jwks.json"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as resp:
        assert resp.status == 200
        assert json.loads(await resp.read())["keys"]
    document_url = f"https://127.0.0.1:{rotor.server.http_port}/.well-known/openid-configuration"
    async with aiohttp.ClientSession() as session, session.get(document_url, ssl=context) as resp:
        document = await resp.json()
    assert "tls_client_auth" in document["token_endpoint_auth_methods_supported"]


@pytest.mark.parametrize(
    "tls, words",
    [
        ({"cert_file": "s.pem"}, "give both"),
        ({"client_ca_file": "ca.pem"}, "client certificates need TLS first"),
        (
            {"cert_file": "s.pem", "key_file": "s.key", "require_client_cert": True},
            "needs tls.client_ca_file",
        ),
        (
            {"cert_file": "s.pem", "key_file": "s.key", "client_ca_file": "ca.pem"},
            "cannot ask for an optional",
        ),
    ],
    ids=["cert_without_key", "ca_without_tls", "require_without_ca", "optional_client_certs"],
)
def test_tls_settings_that_cannot_work_are_refused(tls: dict[str, Any], words: str) -> None:
    """Each impossible [tls] combination is one violation that says why."""
    with pytest.raises(ConfigError) as refused:
        config_from_dict({"tls": tls})
    assert any(words in line for line in refused.value.violations), refused.value.violations
