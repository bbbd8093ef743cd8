from confluent_kafka import TopicPartition

from ruleless.kafka import consumer, producer
from ruleless.settings import Settings


def test_embedded_broker_round_trip(topics: Settings) -> None:
    prod = producer(topics.kafka)
    for i in range(100):
        prod.produce(topics.topics.raw, key=f"k{i % 7}".encode(), value=str(i).encode())
    assert prod.flush(30) == 0
    cons = consumer(topics.kafka, topics.sink.group_id)
    cons.subscribe([topics.topics.raw])
    seen: list[bytes] = []
    for _ in range(60):
        msgs = cons.consume(200, timeout=0.5)
        seen += [m.value() for m in msgs if m.error() is None]
        if len(seen) >= 100:
            break
    cons.close()
    assert sorted(int(v) for v in seen) == list(range(100))
