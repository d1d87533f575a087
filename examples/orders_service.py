"""An example service that accepts only Rotor tokens, verified locally, and calls onward with its own.

    python examples/orders_service.py            # serves examples.Orders on 127.0.0.1:50052
    python examples/orders_client.py             # calls it with a token from Rotor

With `make run` going, paste the `export` line it printed first: ROTOR is
Rotor's address, ROTOR_CLIENT_ID and ROTOR_CLIENT_SECRET the demo client's
credentials (this example uses them both to call and to be called).

What it shows:
- KeySetWatcher keeps the key set current from WatchKeyRotations;
- VerifyingInterceptor checks every call's bearer token with a Verifier, with
  no call to Rotor per request, and hands the claims to the handler;
- TokenClient gives the service its own token for onward calls.

The service speaks gRPC over local credentials (loopback only), because gRPC
sends call credentials only over a secure channel; use TLS across hosts.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
from google.protobuf import wrappers_pb2
from rotor_client import (
    KeyEvent,
    KeyEventType,
    KeySetWatcher,
    TokenClient,
    Verifier,
    VerifyingInterceptor,
    current_claims,
)

ROTOR = os.environ.get("ROTOR", "127.0.0.1:50051")
ISSUER = os.environ.get("ROTOR_ISSUER", "https://tokens.internal")
AUDIENCE = os.environ.get("ORDERS_AUDIENCE", "demo-api")
LISTEN = os.environ.get("ORDERS_LISTEN", "127.0.0.1:50052")
SERVICE = "examples.Orders"


class Orders:
    def __init__(self, tokens: TokenClient) -> None:
        self.tokens = tokens

    async def list(
        self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext
    ) -> wrappers_pb2.StringValue:
        claims = current_claims()  # verified by the interceptor before this runs
        # An onward call would carry the service's own token: await self.tokens.token()
        own = await self.tokens.token()
        return wrappers_pb2.StringValue(
            value=f"orders of {claims.sub} for client {claims.client_id} (scopes: {' '.join(sorted(claims.scopes))}); "
            f"my own token for onward calls ends in ...{own[-8:]}"
        )


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    def on_change(event: KeyEvent) -> None:
        logging.info("key set event %d: %s", event.sequence, KeyEventType.Name(event.type))

    async with (
        KeySetWatcher(ROTOR, on_change=on_change) as watcher,
        TokenClient(
            ROTOR,
            os.environ["ROTOR_CLIENT_ID"],
            os.environ["ROTOR_CLIENT_SECRET"],
            audience=AUDIENCE,
            scope=["demo.read"],
        ) as tokens,
    ):
        verifier = Verifier(watcher, issuer=ISSUER, audience=AUDIENCE)
        interceptor = VerifyingInterceptor(verifier, method_scopes={f"/{SERVICE}/List": ["demo.read"]})
        server = grpc.aio.server(interceptors=[interceptor])
        orders = Orders(tokens)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "List": grpc.unary_unary_rpc_method_handler(
                            orders.list,
                            request_deserializer=wrappers_pb2.StringValue.FromString,
                            response_serializer=wrappers_pb2.StringValue.SerializeToString,
                        )
                    },
                )
            ]
        )
        server.add_secure_port(LISTEN, grpc.local_server_credentials())
        await server.start()
        logging.info("%s serving on %s, verifying tokens from %s locally", SERVICE, LISTEN, ROTOR)
        try:
            await server.wait_for_termination()
        finally:
            await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
