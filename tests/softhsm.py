"""A SoftHSM2 token for the tests of keys on an HSM (Debian package softhsm2).

The token lives in a temporary directory named by SOFTHSM2_CONF, set once per test session
before the PKCS#11 module is first loaded (the module reads it then). Outside CI the tests
that need it skip, naming the package; in CI (CI=true) they fail without it.

`softhsm` (function scope) hands a test the token emptied of every object, and the PIN in
the environment variable the config names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rotor.config import Pkcs11Config

MODULE = os.environ.get("ROTOR_SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
LABEL = "rotor"
PIN = "4711-rotor"
SO_PIN = "0815-rotor-so"
PIN_ENV = "ROTOR_PKCS11_PIN"


def softhsm_or_skip() -> str:
    """softhsm2-util; the test skips without SoftHSM2 (Debian package softhsm2), and fails in CI."""
    util = shutil.which("softhsm2-util")
    if util and Path(MODULE).exists():
        return util
    message = f"needs the Debian package softhsm2 (no softhsm2-util, or no {MODULE})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class SoftHsm:
    conf: Path
    tokens: Path
    module: str = MODULE
    label: str = LABEL
    pin: str = PIN

    @property
    def config(self) -> Pkcs11Config:
        return Pkcs11Config(module=self.module, token_label=self.label, pin_env=PIN_ENV)

    @property
    def env(self) -> dict[str, str]:
        """What a `rotor serve` process needs to reach the token."""
        return {"SOFTHSM2_CONF": str(self.conf), PIN_ENV: self.pin}

    def _session(self):  # type: ignore[no-untyped-def]
        import pkcs11

        token = pkcs11.lib(self.module).get_token(token_label=self.label)
        try:
            return token.open(user_pin=self.pin, rw=True)
        except pkcs11.UserAlreadyLoggedIn:  # a server in this process holds a logged-in session
            return token.open(rw=True)

    def private_labels(self) -> set[str]:
        """The labels of every private key object on the token."""
        from pkcs11 import Attribute, ObjectClass

        with self._session() as session:
            return {o.label for o in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})}

    def attributes(self, label: str) -> dict[str, bool]:
        """CKA_TOKEN, CKA_SENSITIVE and CKA_EXTRACTABLE of the private object labelled `label`."""
        from pkcs11 import Attribute, ObjectClass

        with self._session() as session:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            return {
                "token": bool(key[Attribute.TOKEN]),
                "sensitive": bool(key[Attribute.SENSITIVE]),
                "extractable": bool(key[Attribute.EXTRACTABLE]),
            }

    def wipe(self) -> None:
        with self._session() as session:
            for obj in list(session.get_objects()):
                obj.destroy()

    @contextlib.contextmanager
    def away(self) -> Iterator[None]:
        """The token gone from under the module (its directory moved), and back at the end."""
        aside = self.tokens.with_name("tokens.away")
        self.tokens.rename(aside)
        try:
            yield
        finally:
            aside.rename(self.tokens)


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    util = softhsm_or_skip()
    home = tmp_path_factory.mktemp("softhsm")
    tokens = home / "tokens"
    tokens.mkdir()
    conf = home / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module is first loaded in this process
    subprocess.run(
        [util, "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    return SoftHsm(conf, tokens)


@pytest.fixture
def softhsm(softhsm_token: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    softhsm_token.wipe()
    monkeypatch.setenv(PIN_ENV, softhsm_token.pin)
    return softhsm_token
