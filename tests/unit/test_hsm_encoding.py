"""What a PKCS#11 token hands back, turned into what JOSE wants."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from rotor.core.crypto import CryptoError
from rotor.core.hsm import _jose_ecdsa, _unwrap_octet_string


@pytest.mark.parametrize("size", [32, 48], ids=["ES256", "ES384"])
def test_an_ecdsa_signature_in_der_becomes_fixed_length_r_and_s(size: int) -> None:
    r, s = 1, 2**200 + 7  # short integers: DER drops their leading zeros, JOSE must not
    der = encode_dss_signature(r, s)
    assert _jose_ecdsa(der, size) == r.to_bytes(size, "big") + s.to_bytes(size, "big")


def test_a_raw_r_and_s_of_the_right_length_is_kept_as_it_is() -> None:
    raw = bytes(range(64))
    assert _jose_ecdsa(raw, 32) == raw


def test_a_signature_that_is_neither_raw_nor_der_is_an_error() -> None:
    with pytest.raises(CryptoError, match="neither r‖s nor DER"):
        _jose_ecdsa(b"\x01" * 10, 32)


@pytest.mark.parametrize(
    ("value", "point"),
    [
        pytest.param(b"\x04\x20" + b"\x11" * 32, b"\x11" * 32, id="ed25519-der"),
        pytest.param(b"\x04\x41\x04" + b"\x22" * 64, b"\x04" + b"\x22" * 64, id="p256-der"),
        pytest.param(b"\x04\x81\x61\x04" + b"\x33" * 96, b"\x04" + b"\x33" * 96, id="p384-der-long-form"),
        pytest.param(b"\x04" + b"\x44" * 64, b"\x04" + b"\x44" * 64, id="bare-point"),
    ],
)
def test_an_ec_point_is_taken_out_of_its_octet_string(value: bytes, point: bytes) -> None:
    assert _unwrap_octet_string(value) == point
