"""Event contracts (code + JSON Schema files) and the one validating decoder."""

from schemas.errors import (
    BackpressureError,
    ConfigError,
    DecodeError,
    RulelessError,
    ServiceError,
    SinkWriteError,
)
from schemas.events import (
    DeadLetter,
    RawEvent,
    ScoredEvent,
    decode,
    decode_scored,
    derive_event_id,
    encode,
)

__all__ = [
    "BackpressureError",
    "ConfigError",
    "DeadLetter",
    "DecodeError",
    "RawEvent",
    "RulelessError",
    "ScoredEvent",
    "ServiceError",
    "SinkWriteError",
    "decode",
    "decode_scored",
    "derive_event_id",
    "encode",
]
