"""Signing keys on a PKCS#11 token (an HSM, a cloud HSM, SoftHSM2): made there, never extractable,
every signature made by the device.

The private object is a token object (CKA_TOKEN), CKA_SENSITIVE and not CKA_EXTRACTABLE, labelled
with its kid; the public half is read once, at generation, and kept in the database. Replicas that
share the token find each other's keys by label.

python-pkcs11 initialises the module without OS locking (C_Initialize with no arguments: the
application promises not to call it from two threads at once), so every call into it runs on one
thread of this store's own: calls are serialised, and the event loop never waits on the device.
With calls serialised, one logged-in session serves them all; a pool would add nothing. A call
that fails marks the store broken; the next call (or the readiness check) finalises and
re-initialises the module and logs in again before it tries (SoftHSM2, for one, does not recover
with new sessions alone). Until then callers get SignerUnavailable, and nothing was changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters

from rotor.core.crypto import ACCESS_TOKEN_TYPE, CryptoError, PublicKey, b64url, jwk_of_public
from rotor.core.errors import SignerUnavailable
from rotor.core.keystore import PKCS11, MadeKey, TokenSigner

log = logging.getLogger("rotor.hsm")

T = TypeVar("T")

_CURVE_OID = {"ES256": "secp256r1", "ES384": "secp384r1", "EdDSA": "1.3.101.112"}  # Ed25519
_EC_SIZE = {"ES256": 32, "ES384": 48}
_DIGEST = {"ES256": hashlib.sha256, "ES384": hashlib.sha384}
# what the token must offer for each algorithm: (key generation, signing)
_MECHANISMS = {
    "EdDSA": (Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA),
    "ES256": (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA),
    "ES384": (Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA),
    "PS256": (Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.SHA256_RSA_PKCS_PSS),
    "RS256": (Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.SHA256_RSA_PKCS),
}
_PSS = (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)  # MGF1-SHA256, salt as long as the hash (RFC 7518)


class Pkcs11SetupError(CryptoError):
    """Raised at start-up when the module, the token, the PIN or an algorithm will not do."""


def open_token(module: str, token_label: str, pin: str, algorithms: Iterable[str]) -> Pkcs11KeyStore:
    """The store on `token_label`, logged in, once it is known to do every one of `algorithms`.

    Pkcs11SetupError, with one line that says what to fix, when it cannot be.
    """
    try:
        lib = pkcs11.lib(module)
    except PKCS11Error as e:
        raise Pkcs11SetupError(
            f"pkcs11.module {module!r} is not a PKCS#11 library that loads ({str(e).rpartition(': ')[2] or e})"
        ) from None
    try:
        token = lib.get_token(token_label=token_label)
    except pkcs11.NoSuchToken:
        raise Pkcs11SetupError(
            f"no token labelled {token_label!r} in {module} (pkcs11.token_label; softhsm2-util --show-slots lists them)"
        ) from None
    except PKCS11Error as e:
        raise Pkcs11SetupError(
            f"cannot reach token {token_label!r}: {type(e).__name__} {e}".rstrip()
        ) from None
    try:
        offered = token.slot.get_mechanisms()
    except PKCS11Error as e:
        raise Pkcs11SetupError(f"cannot read what token {token_label!r} can do: {type(e).__name__}") from None
    for alg in sorted(set(algorithms)):
        missing = [m.name for m in _MECHANISMS.get(alg, ()) if m not in offered]
        if alg not in _MECHANISMS or missing:
            raise Pkcs11SetupError(
                f"token {token_label!r} cannot do {alg} (it lacks {', '.join(missing) or 'support'}); "
                "choose another keys.algorithm, or another token"
            )
    store = Pkcs11KeyStore(lib, token_label, pin)
    try:
        store._login()
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise Pkcs11SetupError(
            f"the PIN for token {token_label!r} is wrong (it comes from the variable named by pkcs11.pin_env)"
        ) from None
    except pkcs11.PinLocked:
        raise Pkcs11SetupError(
            f"the user PIN of token {token_label!r} is locked; its security officer must reset it"
        ) from None
    except PKCS11Error as e:
        raise Pkcs11SetupError(
            f"cannot log in to token {token_label!r}: {type(e).__name__} {e}".rstrip()
        ) from None
    return store


@dataclass(frozen=True, slots=True)
class Pkcs11Signer:
    """Signs compact JWS with one key on the token."""

    kid: str
    alg: str
    header_b64: str
    keystore: Pkcs11KeyStore

    async def sign(self, claims: dict[str, Any]) -> str:
        signing_input = f"{self.header_b64}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = await self.keystore.sign(self.kid, self.alg, signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"


class Pkcs11KeyStore:
    """Private halves on a PKCS#11 token; see the module docstring. Build it with `open_token`."""

    name = PKCS11

    def __init__(self, lib: Any, token_label: str, pin: str) -> None:
        self._lib = lib
        self._token_label = token_label
        self._pin = pin
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotor-pkcs11")
        self._lock = threading.Lock()  # belt and braces: the module is never entered twice at once
        self._session: Any = None
        self._keys: dict[str, Any] = {}  # kid -> private key object of the current session
        self._broken = False
        self.healthy = True

    # -- on the module's thread ------------------------------------------------------

    def _login(self) -> None:
        token = self._lib.get_token(token_label=self._token_label)
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except pkcs11.UserAlreadyLoggedIn:  # login is per process: another session of ours did it
            self._session = token.open(rw=True)
        self._keys.clear()

    def _recover(self) -> None:
        log.info("re-initialising the PKCS#11 module for token %r", self._token_label)
        self._session = None
        self._keys.clear()
        self._lib.reinitialize()
        self._login()
        self._broken = False
        self.healthy = True
        log.warning("the PKCS#11 token %r is back; signing resumes", self._token_label)

    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                if self._broken or self._session is None:
                    self._recover()
                return fn(self._session)
            except pkcs11.NoSuchKey:
                # the token answers but lacks the key: another replica destroyed it a moment before
                # this one's key ring moved on; the check notices a token that went away instead
                raise SignerUnavailable(
                    f"the signing key is no longer on token {self._token_label!r} (it was just rotated); retry"
                ) from None
            except PKCS11Error as e:
                if not self._broken:
                    log.error(
                        "the PKCS#11 token %r failed to %s: %s %s",
                        self._token_label,
                        what,
                        type(e).__name__,
                        e,
                    )
                self._broken = True
                self.healthy = False
                raise SignerUnavailable(
                    f"the signing key's HSM (token {self._token_label!r}) cannot {what} right now; retry shortly"
                ) from None

    async def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run, what, fn)

    def _private(self, session: Any, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is None:
            key = self._keys[kid] = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=kid)
        return key

    # -- the KeyStore contract ---------------------------------------------------------

    async def make(self, alg: str, rsa_bits: int) -> MadeKey:
        def generate(session: Any) -> MadeKey:
            draft = "rotor-draft-" + secrets.token_hex(8)  # renamed to the kid once it is known
            private_template = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
            }
            public_template = {Attribute.TOKEN: False, Attribute.VERIFY: True}  # the database keeps it
            match alg:
                case "EdDSA" | "ES256" | "ES384":
                    key_type = KeyType.EC_EDWARDS if alg == "EdDSA" else KeyType.EC
                    params = session.create_domain_parameters(
                        key_type,
                        {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_OID[alg])},
                        local=True,
                    )
                    public, private = params.generate_keypair(
                        store=True,
                        label=draft,
                        mechanism=_MECHANISMS[alg][0],
                        public_template=public_template,
                        private_template=private_template,
                    )
                case "PS256" | "RS256":
                    public, private = session.generate_keypair(
                        KeyType.RSA,
                        rsa_bits,
                        store=True,
                        label=draft,
                        public_template=public_template,
                        private_template=private_template,
                    )
                case _:
                    raise CryptoError(f"unsupported algorithm {alg!r}")
            try:
                jwk = jwk_of_public(_public_key(public, alg), alg)
                private[Attribute.LABEL] = jwk["kid"]
                private[Attribute.ID] = jwk["kid"].encode()
            except BaseException:
                private.destroy()
                raise
            finally:
                public.destroy()
            self._keys[jwk["kid"]] = private
            return MadeKey(jwk, jwk["kid"].encode())

        return await self._call("make a key", generate)

    def signer(self, kid: str, alg: str, private_ref: bytes) -> TokenSigner:
        if private_ref.decode("ascii", "replace") != kid:
            raise CryptoError(f"key {kid} names token object {private_ref[:64]!r}, not its own kid")
        header = {"alg": alg, "kid": kid, "typ": ACCESS_TOKEN_TYPE}
        return Pkcs11Signer(kid, alg, b64url(json.dumps(header, separators=(",", ":")).encode()), self)

    async def sign(self, kid: str, alg: str, data: bytes) -> bytes:
        """The JWS signature of `data` by key `kid`, made on the token."""

        def sign(session: Any) -> bytes:
            try:
                return sign_with(self._private(session, kid))
            except (pkcs11.ObjectHandleInvalid, pkcs11.KeyHandleInvalid):
                self._keys.pop(kid, None)  # destroyed (and perhaps made again) elsewhere: look it up anew
                return sign_with(self._private(session, kid))

        def sign_with(private: Any) -> bytes:
            match alg:
                case "EdDSA":
                    return bytes(private.sign(data, mechanism=Mechanism.EDDSA))
                case "ES256" | "ES384":
                    raw = bytes(private.sign(_DIGEST[alg](data).digest(), mechanism=Mechanism.ECDSA))
                    return _jose_ecdsa(raw, _EC_SIZE[alg])
                case "PS256":
                    return bytes(
                        private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=_PSS)
                    )
                case "RS256":
                    return bytes(private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
                case _:
                    raise CryptoError(f"unsupported algorithm {alg!r}")

        return await self._call("sign", sign)

    async def destroy(self, kid: str, private_ref: bytes | None) -> None:
        def destroy(session: Any) -> None:
            self._keys.pop(kid, None)
            for obj in list(session.get_objects({Attribute.LABEL: kid})):
                obj.destroy()

        await self._call("destroy a key", destroy)
        log.info("destroyed the private object of key %s on token %r", kid, self._token_label)

    async def held(self) -> frozenset[str]:
        def labels(session: Any) -> frozenset[str]:
            return frozenset(o.label for o in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))

        return await self._call("list its keys", labels)

    async def check(self) -> bool:
        """Whether the token answers: a fresh login (a token that went away fails it, where the
        open session may still answer from memory); recovers a broken store first."""

        def probe(session: Any) -> None:
            self._lib.get_token(token_label=self._token_label).open().close()

        try:
            await self._call("answer", probe)
        except SignerUnavailable:
            return False
        return True

    def close(self) -> None:
        """Close the session (the last one closed logs the process out) and stop the thread."""

        def close() -> None:
            with self._lock, contextlib.suppress(PKCS11Error):
                if self._session is not None:
                    self._session.close()
            self._session = None

        self._thread.submit(close)
        self._thread.shutdown(wait=False)


def _public_key(public: Any, alg: str) -> PublicKey:
    """The public half of a key pair just generated on the token."""
    if alg in ("PS256", "RS256"):
        n = int.from_bytes(public[Attribute.MODULUS], "big")
        e = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    point = _unwrap_octet_string(bytes(public[Attribute.EC_POINT]))
    if alg == "EdDSA":
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    curve: ec.EllipticCurve = ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def _unwrap_octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING holding the point (some tokens give the bare point)."""
    if len(value) >= 2 and value[0] == 0x04:
        if value[1] < 0x80 and value[1] == len(value) - 2:
            return value[2:]
        if value[1] == 0x81 and len(value) >= 3 and value[2] == len(value) - 3:
            return value[3:]
    return value


def _jose_ecdsa(signature: bytes, size: int) -> bytes:
    """JOSE's ECDSA signature, r‖s of fixed length: PKCS#11 gives that, but a token that answers in
    DER (SEQUENCE of two INTEGERs) is converted."""
    if len(signature) == 2 * size:
        return signature
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        raise CryptoError(
            f"the token returned an ECDSA signature of {len(signature)} bytes, neither r‖s nor DER"
        ) from None
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
