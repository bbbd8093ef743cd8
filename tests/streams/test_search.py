from pathlib import Path

from ruleless.settings import load_settings
from streams.scoring import ScoringService
from streams.search import search
from tests.factories import fleet_stream


def test_search_finds_learned_behaviours_in_both_algorithms(tmp_path: Path) -> None:
    events = fleet_stream(pairs=4, per_pair=200)
    for algorithm in ("seed", "evidence"):
        svc = ScoringService(load_settings(lancedb={"uri": str(tmp_path)}, engine={"algorithm": algorithm}))
        svc.score(events)
        svc.flush()
    hits = search(str(tmp_path), "logrotate /etc/logrotate.d/nginx", limit=50)
    assert any(h.algorithm == "seed" and "logrotate" in h.behaviour and h.similarity > 0.5 for h in hits)
    assert any(h.algorithm == "evidence" and "logrotate" in h.behaviour for h in hits)
    assert search(str(tmp_path), "", limit=5) == []
