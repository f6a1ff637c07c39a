"""A storm of per-event log lines becomes the first ones and a count of the rest."""

from twisted.internet.task import Clock

from services.burstlog import BurstLog


def test_past_the_share_of_a_second_lines_are_counted_then_summarised():
    clock, lines, summaries = Clock(), [], []
    burst = BurstLog(clock, summaries.append, per_second=3, summary_after=5.0)
    for i in range(10):
        burst(lambda i=i: lines.append(i))
    assert lines == [0, 1, 2] and summaries == []
    clock.advance(1.0)
    burst(lambda: lines.append("next second"))
    assert lines[-1] == "next second"
    clock.advance(4.0)
    assert summaries == [7]
    clock.advance(10.0)
    assert summaries == [7]  # nothing left out since: no empty summary


def test_flush_at_stop_reports_what_is_pending_and_cancels_the_timer():
    clock, summaries = Clock(), []
    burst = BurstLog(clock, summaries.append, per_second=1)
    burst(lambda: None)
    burst(lambda: None)
    burst.flush()
    assert summaries == [1] and clock.getDelayedCalls() == []
