"""The ClickHouse sink: scored topic -> ``security_events``, exactly once per event_id.

- :mod:`sinks.clickhouse` — the table (DDL, row mapping) and the two backends that run
  the same SQL: embedded chdb (default) and a ClickHouse server (clickhouse-connect).
- :mod:`sinks.consume` — the Kafka consumer loop: batch, insert, then commit.
- :mod:`sinks.query` — the read-only SQL endpoint served by the process that owns the store.
"""
