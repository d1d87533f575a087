"""Small conversions of the rotor.v1 messages' well-known types."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2


def seconds(value: timestamp_pb2.Timestamp | duration_pb2.Duration) -> float:
    """A Timestamp as Unix seconds, or a Duration as seconds."""
    return value.seconds + value.nanos / 1e9
