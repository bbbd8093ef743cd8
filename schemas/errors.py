"""One root for every error ruleless raises on purpose.

Each error carries the context an operator needs to find the bad input again:
topic, partition, offset and exec_id where they are known.
"""

from __future__ import annotations


class RulelessError(Exception):
    """Base of all ruleless errors."""

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        exec_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.exec_id = exec_id

    def context(self) -> dict[str, object]:
        """The non-empty context fields, for logs and dead-letter records."""
        fields = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "exec_id": self.exec_id,
        }
        return {k: v for k, v in fields.items() if v is not None}


class DecodeError(RulelessError):
    """A message is not a valid event (not JSON, wrong types, unsafe names...)."""


class Unauthenticated(DecodeError):
    """A message whose signature does not prove the org it names (ruleless/tenancy.py)."""


class SinkWriteError(RulelessError):
    """A batch could not be written to the sink's store."""


class BackpressureError(RulelessError):
    """The target is overloaded; the caller should slow down and retry."""


class ConfigError(RulelessError):
    """Settings are inconsistent or incomplete."""


class ServiceError(RulelessError):
    """An embedded service (broker, store) failed to start or answer."""


class CaptureError(RulelessError):
    """A capture backend cannot start or cannot read its source (e.g. /proc missing)."""


class QueryError(RulelessError):
    """A read query was refused (not read-only, malformed) or failed in the store."""


class ReplayError(RulelessError):
    """A replay cannot run as asked (workers still consuming, empty or bad range)."""


class ShardUnreadable(ServiceError):
    """A shard's stored table exists but cannot be read: never taken for an empty
    baseline (which would alert on everything the workload does)."""


class DeliveryRejected(SinkWriteError):
    """The target refused a write for good (e.g. HTTP 400): retrying cannot help."""
