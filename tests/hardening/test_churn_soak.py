"""Two hours of simulated pod and process churn through the whole exporter: nothing stale, nothing wrong,
nothing growing. The longer soak with memory figures is ``bench/churn_soak.py``."""

from __future__ import annotations

from simulator.churn import ChurnShape, churn_scenario
from simulator.soak import ChurnSoak

HOURS = 2
SHAPE = ChurnShape(gpus=4, seconds=HOURS * 3600.0, pods=420, bare_processes=60, seed=3)


def test_two_hours_of_churn_serve_exactly_what_is_alive_and_keep_state_and_descriptors_flat() -> None:
    scenario = churn_scenario(SHAPE)
    with ChurnSoak(scenario, interval_s=30.0) as soak:
        points = list(soak.run(SHAPE.seconds, checkpoint_every_s=600.0))

    assert len(points) >= 12
    gone_pods = [p for p in scenario.pods if p.stop is not None and p.stop <= SHAPE.seconds]
    assert len(gone_pods) > 250  # the churn really happened
    assert max(p.container_series for p in points) >= 20
    for point in points:
        where = f"at {point.at_s:.0f} s"
        assert point.wrong == [], where  # every served value is what the scenario holds now
        assert point.stale == [], where  # no series of a gone pod or process
        assert point.missing == [], where  # no live process left out
        # the exporter's caches follow what is alive, not everything that ever was
        assert point.tracked["identity_cache"] <= point.processes_alive, where
        assert point.tracked["pod_cache"] == point.pods_alive, where
        assert point.tracked["unreadable_warned"] == 0, where
        assert point.tracked["renderer_prefixes"] <= point.series, where
    settled = points[1:]
    assert max(p.fds for p in settled) - min(p.fds for p in settled) <= 2  # no descriptor leak
    # no thread leak (a leak per pod would show hundreds; the slack is for other tests' threads winding down)
    assert max(p.threads for p in settled) - min(p.threads for p in settled) <= 2
