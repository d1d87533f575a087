"""Rotor: a gRPC token service with pushed key rotation.

Layers, from the edge inward: `rotor.api` (gRPC servicers, authentication, the
error table), `rotor.core` (keys, tokens, rotation, the event hub; no gRPC, no
SQL), `rotor.store` (persistence behind one protocol). `rotor.v1` holds the
generated stubs shared by the server and the client library.
"""

__version__ = "0.1.0"
