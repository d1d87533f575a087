"""Fixtures every test folder shares: the SoftHSM2 token (tests/softhsm.py), made once per session
(the PKCS#11 module reads SOFTHSM2_CONF once per process, so there is only ever one)."""

from softhsm import softhsm, softhsm_token  # noqa: F401 (fixtures)
