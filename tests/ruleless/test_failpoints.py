"""Failpoints: off unless armed, exact when armed, and a typo is an error (never a test
silently run without its fault)."""

from __future__ import annotations

import pytest

from ruleless.failpoints import Action, parse


def test_a_spec_names_kills_and_error_ranges() -> None:
    assert parse("") == {}
    assert parse("worker.published=kill@3; sink.insert=error@2-11") == {
        "worker.published": Action(kill_at=3),
        "sink.insert": Action(errors=range(2, 12)),
    }


@pytest.mark.parametrize("typo", ["sink.insert", "sink.insert=kill", "sink.insert=error@2", "x=explode@1"])
def test_a_spec_that_cannot_be_read_is_refused(typo: str) -> None:
    with pytest.raises(ValueError, match="RULELESS_FAILPOINTS"):
        parse(typo)
