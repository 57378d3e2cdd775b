"""The replay's link model against queueing, delay and loss computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stac_eval.replay.link import Downlink, LinkConfig, LinkSpecError, Uplink


def test_parse_reads_tc_style_units_and_keeps_defaults():
    config = LinkConfig.parse("rate=2mbit,delay=40ms,loss=1%")
    assert (config.rate_bps, config.delay_s, config.loss) == (2e6, 0.04, 0.01)
    assert config.downlink_delay_s == 0.04 and config.queue == 30 and config.seed == 0
    config = LinkConfig.parse("rate=500kbps, delay=0.1s, downdelay=5ms, loss=0.002, queue=0")
    assert config.rate_bps == 4e6  # bytes per second, as tc reads "kbps"
    assert (config.delay_s, config.down_delay_s, config.loss, config.queue) == (
        0.1,
        0.005,
        0.002,
        0,
    )
    assert LinkConfig.parse("rate=inf").rate_bps == 0.0
    assert LinkConfig.parse(config.describe()) == config


@pytest.mark.parametrize(
    "spec", ["rate=2", "rate=fast", "delay=40", "loss=2", "loss=x%", "bandwidth=1mbit", "rate"]
)
def test_parse_refuses_what_it_cannot_read(spec):
    with pytest.raises(LinkSpecError):
        LinkConfig.parse(spec)


def test_fifo_queueing_serialisation_and_delay_by_hand():
    # 1 Mbit/s, 10 ms: a 1250-byte message takes 10 ms on the wire.
    link = Uplink(LinkConfig(rate_bps=1e6, delay_s=0.010, queue=0))
    first = link.send(0.000, 1250)  # wire 0-10 ms, arrives 20 ms
    second = link.send(0.002, 2500)  # waits 8 ms, wire 10-30 ms, arrives 40 ms
    third = link.send(0.005, 125)  # waits until 30 ms, wire 30-31 ms, arrives 41 ms
    idle = link.send(0.100, 1250)  # the queue has drained: no wait
    expected = [
        (0.000, 0.010, 0.020, 0.000),
        (0.010, 0.030, 0.040, 0.008),
        (0.030, 0.031, 0.041, 0.025),
        (0.100, 0.110, 0.120, 0.000),
    ]
    for delivery, (start, finish, arrival, waited) in zip(
        (first, second, third, idle), expected, strict=True
    ):
        assert delivery.delivered
        assert delivery.start_s == pytest.approx(start)
        assert delivery.finish_s == pytest.approx(finish)
        assert delivery.arrival_s == pytest.approx(arrival)
        assert delivery.queueing_s == pytest.approx(waited)


def test_a_full_queue_drops_at_the_tail_and_the_dropped_message_takes_no_time():
    link = Uplink(LinkConfig(rate_bps=8e3, delay_s=0.0, queue=2))  # 1000 bytes = 1 s
    on_wire = link.send(0.0, 1000)
    queued = [link.send(0.1, 1000), link.send(0.2, 1000)]
    dropped = link.send(0.3, 1000)
    assert on_wire.delivered and all(d.delivered for d in queued)
    assert dropped.status == "dropped" and dropped.arrival_s is None
    assert [d.arrival_s for d in queued] == pytest.approx([2.0, 3.0])
    # At 1.5 s the first has left and one waits behind the one on the wire: room again.
    later = link.send(1.5, 1000)
    assert later.delivered and later.arrival_s == pytest.approx(4.0)


def test_unlimited_rate_only_delays():
    link = Uplink(LinkConfig(rate_bps=0, delay_s=0.040))
    deliveries = [link.send(t, 10**6) for t in (0.0, 0.0, 0.04)]
    assert [d.arrival_s for d in deliveries] == pytest.approx([0.04, 0.04, 0.08])


def test_loss_rate_seeded_and_aligned_across_message_sizes():
    config = LinkConfig(rate_bps=1e9, loss=0.1, seed=7, queue=0)
    times = np.arange(5000) / 25.0
    link_a, link_b = Uplink(config), Uplink(config)
    lost_a = [link_a.send(t, 100).status == "lost" for t in times]
    lost_b = [link_b.send(t, 30_000).status == "lost" for t in times]
    assert lost_a == lost_b  # the same frames are lost whatever each method sends
    rate = np.mean(lost_a)
    assert abs(rate - 0.1) < 3 * math.sqrt(0.1 * 0.9 / len(times))
    other_seed = Uplink(LinkConfig(rate_bps=1e9, loss=0.1, seed=8, queue=0))
    assert [other_seed.send(t, 100).status == "lost" for t in times] != lost_a


def test_a_lost_message_still_occupies_the_link():
    config = LinkConfig(rate_bps=8e3, loss=0.5, seed=3, queue=0)
    link = Uplink(config)
    results = [link.send(0.0, 1000) for _ in range(6)]
    assert any(r.status == "lost" for r in results) and any(r.delivered for r in results)
    assert [r.finish_s for r in results] == pytest.approx([1, 2, 3, 4, 5, 6])


def test_downlink_delay_and_loss():
    down = Downlink(LinkConfig(delay_s=0.02, down_delay_s=0.05, loss=0.0))
    assert down.send(1.0, 100).arrival_s == pytest.approx(1.05)
    lossy = Downlink(LinkConfig(delay_s=0.02, loss=0.3, seed=1))
    statuses = [lossy.send(float(t), 10).status for t in range(2000)]
    assert 0.25 < statuses.count("lost") / len(statuses) < 0.35


def test_messages_must_come_in_time_order():
    link = Uplink(LinkConfig())
    link.send(1.0, 10)
    with pytest.raises(ValueError, match="out of order"):
        link.send(0.5, 10)
