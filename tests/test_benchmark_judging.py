"""How ``benchmarks/run.py`` judges a measured ratio: met, at the hand-written floor, within A/A.

The benchmarks themselves run outside the matrix (``tox -e bench-*``); the rules that turn their
numbers into the README's verdicts are plain Python and are checked here on made-up reports.
"""

import functools
import importlib.util
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@functools.lru_cache(maxsize=None)
def _script(name):
    spec = importlib.util.spec_from_file_location("benchmark_" + name, os.path.join(BENCHMARKS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_py():
    return _script("run")


def _mlp_report(sr, hr, aa):
    return {"results": [{"case": "MLP", "mode": "function", "aa": aa,
                         "ratios": {"SR/H": sr, "HR/H": hr},
                         "times": {v: {"median_s": 0.004} for v in ("H", "SR", "HR")}}]}


def _only(verdicts, where):
    (verdict,) = [v for v in verdicts if v["where"] == where]
    return verdict


@pytest.mark.parametrize("sr, hr, aa, expected", [
    (1.015, 1.040, 1.030, "met"),
    # the hand-written check misses the bound as much: at its floor, within the A/A spread
    (1.050, 1.040, 1.030, "at_floor"),
    # ... but not beyond one build's spread above it
    (1.080, 1.040, 1.030, None),
    # a floor within the bound cannot be what prevents meeting it (and A/A 1.01 < 1.03)
    (1.030, 1.015, 1.010, None),
    # not met, no floor reached, but two builds of one step differ as much
    (1.030, 1.015, 1.040, "within_noise"),
])
def test_real_model_ratio_is_read_against_the_hand_written_check(sr, hr, aa, expected):
    verdict = _only(_run_py().models_verdicts(_mlp_report(sr, hr, aa)), "MLP function, SR/H")
    labels = [k for k in ("met", "at_floor", "within_noise") if verdict[k]]
    assert labels == ([expected] if expected else [])
    assert "the hand-written HR/H {:.3f}".format(hr) in verdict["detail"]


def test_floors_are_context_not_targets():
    verdicts = _run_py().models_verdicts(_mlp_report(1.0, 1.0, 1.0))
    assert [v["where"] for v in verdicts] == ["MLP function, SR/H"]


def test_floor_spread_is_capped_at_one_builds_spread():
    # an A/A of 1.20 does not let a ratio 15 % above the floor count as "at the floor"
    verdict = _only(_run_py().models_verdicts(_mlp_report(1.20, 1.04, 1.20)), "MLP function, SR/H")
    assert not verdict["at_floor"] and verdict["within_noise"]


def test_memory_verdict_names_the_ablation():
    peak = {"V1": 570.0, "SR": 575.0, "SS": 600.0, "SN": 569.0}
    report = {"results": [{"model": "M1", "mode": "session", "peak_mib": peak,
                           "ratios": {"SR/V1": 575 / 570.0, "SS/V1": 600 / 570.0}}]}
    skip = _only(_run_py().memory_verdicts(report), "M1 session, SS/V1")
    assert not skip["met"]
    assert "SN (no diagnosis, no If) / V1 0.998" in skip["detail"]
    assert _only(_run_py().memory_verdicts(report), "M1 session, SR/V1")["met"]


def test_a_a_compares_the_medians_of_two_halves_of_the_builds():
    a_a = _script("bench_models").a_a
    assert a_a([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.5)  # even builds 1, 3 -> 2; odd 2, 4 -> 3
    assert a_a([4.0, 1.0, 3.0, 2.0]) == pytest.approx(3.5 / 1.5)  # builds in order, not sorted
    assert a_a([1.0, 1.1, 1.0, 1.1, 1.0]) == pytest.approx(1.1)
    assert a_a([0.05]) == 1.0  # one build: no A/A to measure


def test_first_call_target_counts_safegrad_traces_not_the_hand_written_floors():
    report = _mlp_report(1.0, 1.0, 1.0)
    report["results"][0]["times"] = {"H": {"traces": 2}, "HR": {"traces": 5}, "SR": {"traces": 2}}
    traces = _only(_run_py().models_verdicts(report), "MLP function, traces")
    assert traces["met"] and traces["value"] == 2
    report["results"][0]["times"]["SR"]["traces"] = 3
    assert not _only(_run_py().models_verdicts(report), "MLP function, traces")["met"]


def test_memory_benchmark_refuses_a_negative_arena_count():
    with pytest.raises(SystemExit) as exited:
        _script("bench_memory").main(["--malloc-arena-max", "-1"])
    assert exited.value.code == 2  # argparse's usage error, before any process is started


def test_ops_run_beyond_the_first_variant_are_counted_by_type():
    ops_beyond = _script("bench_models").ops_beyond
    diff = ops_beyond({"Mul": 3, "Assert": 1, "Sqrt": 1}, {"Mul": 3, "Minimum": 1, "Sqrt": 1})
    assert diff == {"Assert": 1, "Minimum": -1} and list(diff) == ["Assert", "Minimum"]
    entry = {"ops_run": {"H": 99, "SR": 127, "HR": 100}}
    assert _run_py()._ops_cell(entry) == "H 99; SR +28, HR +1"
    assert _run_py()._ops_cell({}) == "-"  # cases and TF versions where they are not counted
