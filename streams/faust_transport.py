"""Faust's Kafka (aiokafka) transport, with the fetch wait taken from our settings.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no way to change
it. Kafka answers a fetch as soon as records arrive, so there the wait only matters on
idle partitions; tansu (the embedded broker) holds every fetch for the whole wait, which
put up to 1.5 s on each event's way from the raw topic to the worker. This transport is
Faust's own, except that the consumer it creates waits ``kafka.fetch_wait_max_ms``.

Select it with a broker URL of scheme :data:`SCHEME` after :func:`register`.

It leans on internals of Faust and aiokafka that no release promises to keep; they are
listed in :func:`moved_internals`, which :func:`register` runs so that an upgrade that
moves one stops the worker with a sentence naming it (issue 12), not with a latency
regression nobody traces back.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
from faust.streams import Stream
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


def moved_internals() -> list[str]:
    """The private pieces of Faust and aiokafka the worker relies on that are not where
    (or not what) it expects, each as a sentence; empty when all are in place."""
    problems = []

    def method(owner: type, name: str) -> None:
        if not callable(getattr(owner, name, None)):
            problems.append(f"{owner.__module__}.{owner.__qualname__}.{name} is gone (overridden by streams/faust_transport.py)")

    method(driver.AIOKafkaConsumerThread, "_create_worker_consumer")
    method(driver.Consumer, "_new_consumer_thread")
    method(Stream, "noack_take")  # streams/worker.py takes batches without auto-acks
    if not isinstance(getattr(TRANSPORTS, "aliases", None), dict):
        problems.append("faust.transport.drivers.TRANSPORTS.aliases is no longer a dict (register() adds our scheme to it)")
    # The wait is set on the built consumer before start(), which reads it then.
    init = inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    if "self._fetch_max_wait_ms = " not in init or "self._fetch_max_wait_ms" not in start:
        problems.append("aiokafka.AIOKafkaConsumer no longer keeps its fetch wait in _fetch_max_wait_ms read by start()")
    return problems


def register() -> None:
    """Make ``ruleless://host:port`` broker URLs use this transport (idempotent).

    Raises :class:`RuntimeError` naming each internal that moved (see :func:`moved_internals`)."""
    problems = moved_internals()
    if problems:
        raise RuntimeError(
            f"faust-streaming {version('faust-streaming')} / aiokafka {aiokafka.__version__} moved what the worker relies on "
            "(pin the versions in requirements.lock, or adapt streams/faust_transport.py): " + "; ".join(problems)
        )
    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")

