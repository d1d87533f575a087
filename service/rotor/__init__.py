"""Rotor: a gRPC token service with pushed key rotation.

Layers, from the edge inward: `rotor.api` (gRPC servicers, authentication, the
error table), `rotor.core` (keys, tokens, rotation, the event hub; no gRPC, no
SQL), `rotor.store` (persistence behind one protocol). `rotor.v1` holds the
generated stubs shared by the server and the client library: they ship in the
rotor-client distribution (clients/python/rotor/v1), so `rotor` spans both.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # first: rotor_client imports rotor.v1

from rotor_client._version import __version__

__all__ = ["__version__"]
