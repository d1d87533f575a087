"""Local verification: rotor_client's Verifier against raw `jwt.decode` with a known key.

Both verify the same Rotor-shaped token (EdDSA, RFC 9068 claims) in this
process, in alternating rounds; the figure is the ratio of their throughputs,
so the machine's speed cancels out.

    python bench/verify.py [--rounds N] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from rotor_client import Verifier

ISSUER = "https://tokens.internal"
AUDIENCE = "orders"
TARGET = 0.8
KEYS: dict[str, Callable[[], Any]] = {
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
}


def token_and_verifiers(alg: str) -> tuple[str, Callable[[], object], Callable[[], object]]:
    private = KEYS[alg]()
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = algorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": "k1", "alg": alg, "use": "sig"}
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "orders",
        "aud": AUDIENCE,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "jti": uuid.uuid4().hex,
        "client_id": "orders",
        "scope": "orders.read orders.write",
    }
    token = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k1", "typ": "at+jwt"})
    verifier = Verifier.from_jwks(
        {"keys": [jwk]}, issuer=ISSUER, audience=AUDIENCE, required_scopes=["orders.read"]
    )
    public = private.public_key()

    def rotor() -> object:
        return verifier.verify(token)

    def raw() -> object:
        return jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

    return token, rotor, raw


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, run for about `seconds`."""
    n, batch = 0, 64
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def measure(alg: str, rounds: int, seconds: float) -> dict[str, Any]:
    _, rotor, raw = token_and_verifiers(alg)
    rotor(), raw()  # both accept the token
    rotor_rates, raw_rates = [], []
    for _ in range(rounds):  # alternate, so drift in the machine's speed hits both
        raw_rates.append(rate(raw, seconds))
        rotor_rates.append(rate(rotor, seconds))
    ours, theirs = statistics.median(rotor_rates), statistics.median(raw_rates)
    return {
        "alg": alg,
        "verify_per_s": round(ours),
        "jwt_decode_per_s": round(theirs),
        "ratio": round(ours / theirs, 3),
        "target": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median counts")
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    results = [measure(alg, args.rounds, args.seconds) for alg in KEYS]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'alg':<6} {'verify/s':>10} {'jwt.decode/s':>13} {'ratio':>7}  target")
    for r in results:
        mark = "ok" if r["ratio"] >= TARGET else "BELOW"
        print(
            f"{r['alg']:<6} {r['verify_per_s']:>10} {r['jwt_decode_per_s']:>13} {r['ratio']:>7.2f}  >= {TARGET} {mark}"
        )


if __name__ == "__main__":
    main()
