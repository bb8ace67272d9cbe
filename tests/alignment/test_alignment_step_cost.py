"""The estimated cost of an MGA step on a large graph and the start-up warning built from it."""

import math

import pytest

from exgramed_plugin.alignment.step_cost import MEASURED_STEP_SECONDS, estimated_step_seconds, global_graph_warning


def test_estimate_follows_the_measurements_and_a_power_law_between_them():
    for nodes, seconds in MEASURED_STEP_SECONDS.items():
        assert estimated_step_seconds(nodes) == pytest.approx(seconds)
    # halfway on a log scale between 512 and 1,024 nodes: the geometric mean of the two times
    middle = estimated_step_seconds(round(math.sqrt(512 * 1024)))
    assert middle == pytest.approx(math.sqrt(MEASURED_STEP_SECONDS[512] * MEASURED_STEP_SECONDS[1024]), rel=1e-3)
    # beyond the table, the last slope goes on: one more doubling multiplies by t(1024) / t(512) again
    extrapolated = MEASURED_STEP_SECONDS[1024] ** 2 / MEASURED_STEP_SECONDS[512]
    assert estimated_step_seconds(2048) == pytest.approx(extrapolated)
    times = [estimated_step_seconds(n) for n in (64, 100, 128, 300, 512, 700, 1024, 2048)]
    assert times == sorted(times)


@pytest.mark.parametrize("processes,share", [(1, 1.0), (2, 3 / 6), (4, 2 / 6), (6, 1 / 6), (64, 1 / 6)])
def test_each_process_pays_for_its_share_of_the_six_problems(processes, share):
    assert estimated_step_seconds(1024, processes) == pytest.approx(share * MEASURED_STEP_SECONDS[1024])


def test_warning_above_512_nodes_names_the_graph_and_its_cost():
    assert global_graph_warning(16, 32) is None  # 512 nodes
    text = global_graph_warning(16, 64)
    assert "1024 nodes" in text and "16 x 64 processes" in text
    assert f"about {estimated_step_seconds(1024, 64):.1f} s" in text and "each solves 1 of the 6" in text
