"""The progress bar's arithmetic, driven by a fake clock: count, rate and a sane ETA.

These are tests of arithmetic, not of machine speed: time is whatever the test says.
"""

from __future__ import annotations

import io

import pytest

from edge_app.cli.progress import Progress, RateEstimate, format_bytes, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bar(total, clock, unit="images", **kwargs) -> Progress:
    return Progress(total, unit, stream=io.StringIO(), enabled=True, clock=clock, **kwargs)


def test_a_slow_start_does_not_predict_hours():
    """The issue's case: 16 s of work after a slow first item (model load, forks)."""
    clock = Clock()
    progress = bar(1000, clock)
    clock.now += 30.0  # start-up: nothing done for 30 s
    progress.advance()  # the first item
    assert progress.eta_seconds() is None  # no evidence yet: no ETA at all
    for _ in range(200):  # then 62.5 images/s steadily: 16 s for the whole job
        clock.now += 0.016
        progress.advance()
    eta = progress.eta_seconds()
    assert eta == pytest.approx(799 * 0.016, rel=0.05)  # ~12.8 s, not 00:50:12
    assert "ETA 0:13" in progress.text(width=120)
    assert "201/1,000 images" in progress.text(width=120)
    assert "62.5 images/s" in progress.text(width=120)


def test_no_eta_until_a_few_items_and_seconds():
    clock = Clock()
    progress = bar(100, clock, min_items=3, min_seconds=2.0)
    progress.advance()
    clock.now += 0.5
    progress.advance()
    assert progress.eta_seconds() is None  # two items
    clock.now += 0.5
    progress.advance()
    assert progress.eta_seconds() is None  # three items, but only 1 s of evidence
    assert "ETA --:--" in progress.text(width=100)
    clock.now += 1.0
    progress.advance()
    # Items came at 2/s, then 1/s: 96 left take between 48 and 96 s.
    assert 48.0 <= progress.eta_seconds() <= 96.0


def test_the_rate_is_smoothed_and_follows_a_change():
    rate = RateEstimate(tau=5.0)
    now, done = 0.0, 0
    for _ in range(100):  # 10 items/s for 10 s
        now += 0.1
        done += 1
        rate.update(done, now)
    assert rate.rate == pytest.approx(10.0, rel=0.01)
    now += 1.0  # one stall of a second...
    done += 1
    rate.update(done, now)
    assert rate.rate > 7.0  # ...moves the estimate a little, not to 1 item/s
    for _ in range(300):  # then 20 items/s for 15 s (three time constants)
        now += 0.05
        done += 1
        rate.update(done, now)
    assert rate.rate == pytest.approx(20.0, rel=0.1)


def test_results_in_bursts_give_the_average_rate_not_thousands_a_second():
    """Worker pools hand results back in chunks: 16 at once every 0.64 s is 25/s."""
    clock = Clock()
    progress = bar(1000, clock)
    seen = []
    for _ in range(30):
        clock.now += 0.64
        for _ in range(16):  # the same instant
            progress.advance()
            if progress.items_per_second() is not None:
                seen.append(progress.items_per_second())
    assert max(seen) < 60  # never the "2,000 images/s" of an instant
    assert progress.items_per_second() == pytest.approx(25.0, rel=0.15)
    assert progress.eta_seconds() == pytest.approx((1000 - 480) / 25.0, rel=0.15)


def test_bytes_mode_for_downloads():
    clock = Clock()
    progress = bar(16_900_000, clock, unit="bytes", label="fetching")
    progress.advance(1_000_000)
    for _ in range(20):
        clock.now += 0.25
        progress.advance(500_000)  # 2 MB/s
    text = progress.text(width=100)
    assert text.startswith("fetching [")
    assert "11.0 MB / 16.9 MB" in text and "2.0 MB/s" in text and "ETA 0:03" in text


def test_fits_the_width_and_is_quiet_off_a_terminal():
    clock = Clock()
    progress = bar(10, clock, label="classifying")
    for _ in range(10):
        clock.now += 1.0
        progress.advance()
    assert len(progress.text(width=40)) < 40
    assert "[" not in progress.text(width=30)  # no room for the bar: the figures stay
    assert progress.text(width=100).count("#") == 40  # done: a full bar
    stream = io.StringIO()  # not a terminal
    quiet = Progress(10, stream=stream, clock=clock)
    quiet.advance(5)
    quiet.close()
    assert stream.getvalue() == ""


def test_unknown_total_and_singular():
    clock = Clock()
    progress = bar(None, clock)
    progress.advance()
    assert progress.text(width=80).startswith("1 image ")
    assert "[" not in progress.text(width=80)
    assert "0/1 image " in bar(1, clock).text(width=80)


def test_durations_and_sizes_read_plainly():
    assert format_duration(7) == "0:07"
    assert format_duration(205) == "3:25"
    assert format_duration(3723) == "1:02:03"
    assert format_bytes(512) == "512 B"
    assert format_bytes(16_900_000) == "16.9 MB"
