"""Calls the example orders service with a token from Rotor (see orders_service.py).

python examples/orders_client.py
"""

from __future__ import annotations

import os

import grpc
from google.protobuf import wrappers_pb2
from rotor_client import TokenClient

ROTOR = os.environ.get("ROTOR", "127.0.0.1:50051")
ORDERS = os.environ.get("ORDERS_LISTEN", "127.0.0.1:50052")


def main() -> None:
    with TokenClient(
        ROTOR,
        os.environ["ROTOR_CLIENT_ID"],
        os.environ["ROTOR_CLIENT_SECRET"],
        audience="demo-api",
        scope=["demo.read"],
    ) as tokens:
        # every call carries `authorization: Bearer <token>`, renewed ahead of expiry
        credentials = grpc.composite_channel_credentials(
            grpc.local_channel_credentials(), tokens.call_credentials()
        )
        with grpc.secure_channel(ORDERS, credentials) as channel:
            list_orders = channel.unary_unary(
                "/examples.Orders/List",
                request_serializer=wrappers_pb2.StringValue.SerializeToString,
                response_deserializer=wrappers_pb2.StringValue.FromString,
            )
            print(list_orders(wrappers_pb2.StringValue(value="all"), timeout=10).value)


if __name__ == "__main__":
    main()
