"""The client library against a real Rotor in this process (the api tests' fixtures)."""

from api.conftest import make_rotor, ops, rotor, svc

__all__ = ["make_rotor", "ops", "rotor", "svc"]
