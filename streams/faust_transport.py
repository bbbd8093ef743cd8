"""Faust's Kafka (aiokafka) transport, with two changes to its consumer.

1. The fetch wait is taken from our settings. Faust builds its aiokafka consumer with
   ``fetch_max_wait_ms=1500`` and no way to change it. Kafka answers a fetch as soon as
   records arrive, so there the wait only matters on idle partitions; tansu (the
   embedded broker) holds every fetch for the whole wait, which put up to 1.5 s on each
   event's way from the raw topic to the worker.
2. Fetched messages reach the streams in bursts, without Faust's per-message
   ``wait_first`` (see :meth:`Consumer.wait_first`): one worker went from ~8,000 to
   ~11,000 events/s draining a loaded topic (issue 17).

Select it with a broker URL of scheme :data:`SCHEME` after :func:`register`;
:data:`STOCK_DELIVERY_SCHEME` has the first change only (Faust's floor in make bench).

It leans on internals of Faust and aiokafka that no release promises to keep; they are
listed in :func:`moved_internals`, which :func:`register` runs so that an upgrade that
moves one stops the worker with a sentence naming it (issue 12), not with a latency
regression nobody traces back.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
from faust.streams import Stream
from mode.services import WaitResults
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as driver

from ruleless.settings import KafkaSettings

SCHEME = "ruleless"
STOCK_DELIVERY_SCHEME = "ruleless-stock"
# (An app that does not say: the settings' own default.)
DEFAULT_FETCH_WAIT_MS: int = KafkaSettings.model_fields["fetch_wait_max_ms"].default
# How long the fetch loop sleeps while stream buffers are crowded (see Consumer.wait_first).
CROWDED_SLEEP_S = 0.005


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher, which comes later.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_wait_max_ms", DEFAULT_FETCH_WAIT_MS)
        return consumer


class FetchWaitConsumer(driver.Consumer):
    """Faust's consumer with the fetch wait of our settings, and nothing else changed."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Consumer(FetchWaitConsumer):
    """The worker's consumer: the fetch wait, and messages handed to streams in bursts."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Faust's fetch loop hands each message to its streams through
        ``wait_first(deliver(message), suspend_flow.wait())``, so that a delivery stuck
        on a full stream buffer gives way when a rebalance stops the flow: four tasks and
        an ``asyncio.wait`` per message, ~10 % of the worker's event loop in a py-spy
        profile. And with the worker behind its input the buffer is always full, so
        each message waited for the stream to take one: a task switch per message.

        Here, while a stream buffer is more than half full the fetch loop sleeps
        (waking every few ms to see whether the flow stopped), then delivers directly:
        with the flow running and room in every buffer, delivering waits on nothing but
        an uncontended lock. A stopped flow, a stopping consumer or any other call
        takes Faust's own path."""
        if len(coros) != 2 or timeout is not None or not inspect.iscoroutine(coros[0]):
            return await super().wait_first(*coros, timeout=timeout)
        while self._flowing() and self._buffers_crowded():
            await asyncio.sleep(CROWDED_SLEEP_S)
        if not self._flowing():
            return await super().wait_first(*coros, timeout=timeout)
        deliver, flow_stopped = coros
        if inspect.iscoroutine(flow_stopped):
            flow_stopped.close()
        return WaitResults([deliver], [await deliver], False)

    def _flowing(self) -> bool:
        return not (self.suspend_flow.is_set() or self.should_stop)

    def _buffers_crowded(self) -> bool:
        return any(topic.queue.qsize() * 2 > topic.queue.maxsize > 0 for topic in self.app.topics)


class Transport(driver.Transport):
    Consumer = Consumer


class StockDeliveryTransport(driver.Transport):
    """Faust's own per-message delivery (for Faust's floor in make bench)."""

    Consumer = FetchWaitConsumer


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
    drain = inspect.getsource(driver.Consumer._drain_messages)
    if "self.wait_first(" not in drain or "self.suspend_flow.wait()" not in drain:
        problems.append("faust.transport.consumer.Consumer._drain_messages no longer delivers each message through "
                        "wait_first(callback(message), suspend_flow.wait()) (Consumer.wait_first relies on it)")
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
    TRANSPORTS.aliases.setdefault(STOCK_DELIVERY_SCHEME, f"{__name__}:StockDeliveryTransport")

