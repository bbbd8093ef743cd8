"""Faust's Kafka (aiokafka) transport, with the fetch wait taken from our settings.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no way to change
it. Kafka answers a fetch as soon as records arrive, so there the wait only matters on
idle partitions; tansu (the embedded broker) holds every fetch for the whole wait, which
put up to 1.5 s on each event's way from the raw topic to the worker. This transport is
Faust's own, except that the consumer it creates waits ``kafka.fetch_wait_max_ms``.

Select it with a broker URL of scheme :data:`SCHEME` after :func:`register`.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as driver

from ruleless.settings import KafkaSettings

SCHEME = "ruleless"
# (An app that does not say: the settings' own default.)
DEFAULT_FETCH_WAIT_MS: int = KafkaSettings.model_fields["fetch_wait_max_ms"].default


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher, which comes later.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_wait_max_ms", DEFAULT_FETCH_WAIT_MS)
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = Consumer


def register() -> None:
    """Make ``ruleless://host:port`` broker URLs use this transport (idempotent)."""
    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
