"""Threshold overrides (streams/thresholds.py) in a real LanceDB, and the engine scoring
with them ahead of the configured ones."""

from __future__ import annotations

from pathlib import Path

from ruleless.settings import EngineSettings, Thresholds
from streams.engine import Engine
from streams.thresholds import ThresholdOverrides
from tests.factories import event, workload_stream


def test_overrides_are_durable_upserted_and_deleted(tmp_path: Path) -> None:
    api = ThresholdOverrides(str(tmp_path))
    assert api.all() == {}
    api.set("acme/web", Thresholds(warn=0.5, alert=0.6), by="api:1")
    api.set("acme/web", Thresholds(warn=0.4, alert=0.6), by="api:2")
    api.set("it's/odd", Thresholds(warn=0.1, alert=0.2))
    worker = ThresholdOverrides(str(tmp_path))  # (another process reads what the API wrote)
    assert worker.all() == {"acme/web": Thresholds(warn=0.4, alert=0.6), "it's/odd": Thresholds(warn=0.1, alert=0.2)}
    assert worker.rows()["acme/web"]["updated_by"] == "api:2"
    api.delete("it's/odd")
    api.delete("never/set")
    assert set(worker.all()) == {"acme/web"}


def test_the_engine_scores_with_overrides_before_configured_thresholds() -> None:
    settings = EngineSettings(thresholds={"acme/web": Thresholds(warn=0.0, alert=0.0)})  # (configured: everything alerts)
    engine = Engine(settings)
    routine = list(workload_stream("acme", "web", "web", 300))
    engine.score(routine)

    def again(i: int) -> str:
        e = event(**{"org_id": "acme", "workload": "web", "ts": routine[-1].ts + i, "pid": 9 + i,
                     "cmdline": routine[0].cmdline, "process_name": routine[0].process_name})
        return engine.score([e])[0].severity

    assert again(1) == "alert"
    engine.overrides = {"acme/web": Thresholds(warn=1.0, alert=1.0)}  # (set through the API)
    assert again(2) == "ok"
    engine.overrides = {"other/web": Thresholds(warn=1.0, alert=1.0)}
    assert again(3) == "alert"
