"""Tests of the decision policy (pure logic; the caller's clock is the only clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asd_edge.decision import Decision, DecisionPolicy, Event

HOP = 0.5


def run(
    decision: Decision, scores: list[float], hop: float = HOP
) -> list[tuple[str, float, Event]]:
    """Feed scores at t = hop, 2*hop, ...; return (phase, time, event) of every phase."""
    out = []
    for i, score in enumerate(scores, start=1):
        event = decision.update(score, i * hop)
        if event is not None:
            out.append((event.phase, i * hop, event))
    return out


class TestOnset:
    def test_k_of_n(self) -> None:
        """With 2 of 3, one window above is not enough; two within three windows start an event."""
        d = Decision(DecisionPolicy(threshold=1.0, onset_k=2, onset_n=3))
        assert run(d, [2.0, 0.0, 0.0, 2.0, 0.0]) == []
        d = Decision(DecisionPolicy(threshold=1.0, onset_k=2, onset_n=3))
        phases = run(d, [0.0, 2.0, 0.0, 3.0])
        assert [(p, t) for p, t, _ in phases] == [("start", 2.0)]
        event = phases[0][2]
        assert event.onset_s == 1.0
        assert event.peak_score == 3.0
        assert event.threshold == 1.0

    def test_threshold_is_strict(self) -> None:
        """A score equal to the threshold is not anomalous; NaN is never anomalous."""
        d = Decision(DecisionPolicy(threshold=1.0, onset_k=1, onset_n=1))
        assert run(d, [1.0, math.nan, 1.0]) == []
        assert run(d, [1.0001])[0][0] == "start"

    def test_one_of_one_starts_at_once(self) -> None:
        """k=1, n=1 starts on the first window above the threshold."""
        d = Decision(DecisionPolicy(threshold=0.0, onset_k=1, onset_n=1))
        assert [(p, t) for p, t, _ in run(d, [-1.0, 5.0])] == [("start", 1.0)]


class TestEnd:
    def test_hold_time(self) -> None:
        """The event ends once no window has been above for hold_s, with the event's peak."""
        d = Decision(
            DecisionPolicy(threshold=1.0, onset_k=1, onset_n=1, hold_s=1.0, refractory_s=0)
        )
        phases = run(d, [2.0, 4.0, 0.0, 3.0, 0.0, 0.0, 0.0])
        assert [(p, t) for p, t, _ in phases] == [("start", 0.5), ("end", 3.0)]
        end = phases[1][2]
        assert end.peak_score == 4.0
        assert end.onset_s == 0.5
        assert end.last_anomalous_s == 2.0
        assert not d.active

    def test_close_ends_an_open_event(self) -> None:
        """close() ends an event in progress and does nothing when idle."""
        d = Decision(DecisionPolicy(threshold=1.0, onset_k=1, onset_n=1))
        assert d.close(0.0) is None
        run(d, [2.0])
        event = d.close(10.0)
        assert event is not None and event.phase == "end" and event.at_s == 10.0
        assert d.close(11.0) is None


class TestRefractory:
    def test_no_new_event_during_refractory(self) -> None:
        """After an end, anomalous windows within refractory_s do not start a new event."""
        policy = DecisionPolicy(threshold=1.0, onset_k=1, onset_n=1, hold_s=0.5, refractory_s=2.0)
        d = Decision(policy)
        # start at 0.5, end at 1.0 (0.5 s below), refractory until 3.0
        phases = run(d, [2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0])
        assert [(p, t) for p, t, _ in phases] == [("start", 0.5), ("end", 1.0), ("start", 4.0)]

    def test_old_windows_do_not_restart_an_event(self) -> None:
        """Windows of an ended event are not counted again for the next onset."""
        policy = DecisionPolicy(threshold=1.0, onset_k=2, onset_n=3, hold_s=0.5, refractory_s=0.0)
        d = Decision(policy)
        phases = run(d, [2.0, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0])
        assert [p for p, _, _ in phases] == ["start", "end"]


class TestPolicy:
    def test_rejects_bad_values(self) -> None:
        """k > n, k < 1, negative times and a non-finite threshold are refused."""
        for kwargs in (
            {"onset_k": 4, "onset_n": 3},
            {"onset_k": 0},
            {"hold_s": -1.0},
            {"refractory_s": -1.0},
            {"threshold": math.inf},
        ):
            with pytest.raises(ValueError):
                DecisionPolicy(**{"threshold": 1.0, **kwargs})  # type: ignore[arg-type]


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.floats(-5, 5) | st.just(math.nan), max_size=200),
        st.integers(1, 5),
        st.integers(0, 4),
        st.floats(0, 3),
        st.floats(0, 5),
    )
    def test_phases_alternate_and_respect_rules(
        self, scores: list[float], k: int, extra: int, hold_s: float, refractory_s: float
    ) -> None:
        """Phases alternate start/end; each start is backed by k of the last n windows;
        no start comes within refractory_s of the previous end."""
        n = k + extra
        policy = DecisionPolicy(0.0, onset_k=k, onset_n=n, hold_s=hold_s, refractory_s=refractory_s)
        d = Decision(policy)
        last_end = -math.inf
        expected = "start"
        for i, score in enumerate(scores):
            now = i * HOP
            event = d.update(score, now)
            if event is None:
                continue
            assert event.phase == expected
            if event.phase == "start":
                # k anomalous windows among the last n, all after the refractory period
                first = max(0, i - n + 1)
                recent = [
                    s
                    for j, s in enumerate(scores[first : i + 1], start=first)
                    if j * HOP >= last_end + refractory_s - 1e-9
                ]
                assert sum(s > 0.0 for s in recent) >= k
                assert now >= last_end + refractory_s - 1e-9
                assert event.peak_score > 0.0
            else:
                last_end = now
                assert now - event.last_anomalous_s >= hold_s - 1e-9
            expected = "end" if expected == "start" else "start"
