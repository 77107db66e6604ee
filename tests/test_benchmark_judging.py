"""How ``benchmarks/run.py`` judges a measured ratio: met, at the hand-written floor, within A/A.

The benchmarks themselves run outside the matrix (``tox -e bench-*``); the rules that turn their
numbers into the README's verdicts are plain Python and are checked here on made-up reports, and
the hand-written floors they are judged against are checked to do what their names say.
"""

import functools
import importlib.util
import json
import os

import numpy as np
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


def _scale_report(builds):
    """bench_scale's report of one 3,000-variable Session-graph row built from ``builds``
    (variant -> seconds of each build; 100 ops, 1 trace each)."""
    samples = {k: [(seconds, 100, 1) for seconds in s] for k, s in builds.items()}
    return {"repeats": len(builds["V0"]), "results": [_script("bench_scale").summarize("graph", 3000, samples)]}


def test_build_ratio_is_the_median_of_the_builds_and_names_their_spread():
    # one slow SS build (as round 5's single 3,000-variable build) does not decide the verdict
    builds = {"V0": [10.0, 10.4, 9.8], "VB": [12.0, 12.1, 12.2], "VC": [11.0, 11.1, 11.2],
              "SR": [10.2, 10.1, 10.3], "SS": [12.5, 10.3, 10.2]}
    verdicts = _run_py().scale_verdicts(_scale_report(builds))
    skip = _only(verdicts, "graph 3000 vars, SS/V0")
    assert skip["met"] and skip["value"] == pytest.approx(10.3 / 10.0)
    assert "3 builds: SS 10.20-12.50 s, V0 9.80-10.40 s" in skip["detail"]
    builds["SS"] = [12.5, 12.0, 10.2]  # two slow builds of three: not met, and VC (1.11) is no floor here
    skip = _only(_run_py().scale_verdicts(_scale_report(builds)), "graph 3000 vars, SS/V0")
    assert not skip["met"] and not skip["at_floor"] and skip["value"] == pytest.approx(1.2)


def test_skip_build_is_judged_against_the_hand_written_step_that_names_and_skips():
    # SS both names the bad gradients and skips: its floor is VD (both), not VC (the skip alone)
    builds = {"V0": [10.0, 10.0, 10.0], "VB": [11.5, 11.5, 11.5], "VC": [11.0, 11.0, 11.0],
              "VD": [12.0, 12.0, 12.0], "SR": [10.0, 10.0, 10.0], "SS": [12.4, 12.4, 12.4]}
    skip = _only(_run_py().scale_verdicts(_scale_report(builds)), "graph 3000 vars, SS/V0")
    assert skip["at_floor"] and "the hand-written VD builds in 1.200 x V0" in skip["detail"]
    builds["SS"] = [12.7, 12.7, 12.7]  # more than one build's spread above VD: not its floor
    skip = _only(_run_py().scale_verdicts(_scale_report(builds)), "graph 3000 vars, SS/V0")
    assert not skip["met"] and not skip["at_floor"]
    del builds["VD"]  # a report from before VD: VC (1.10, not above the bound) is no floor
    skip = _only(_run_py().scale_verdicts(_scale_report(builds)), "graph 3000 vars, SS/V0")
    assert not skip["at_floor"] and "the hand-written VC builds in 1.100 x V0" in skip["detail"]


def test_build_table_states_how_many_builds_and_older_reports_still_judge():
    builds = {k: [10.0, 10.0, 10.0] for k in ("V0", "VB", "VC", "VD", "SR", "SS")}
    report = {"scale": _scale_report(builds), "tensorflow": "2.21.0"}
    report["targets"] = _run_py().scale_verdicts(report["scale"])
    args = _run_py().main.__globals__["argparse"].Namespace(memory_repeats=3, runs=5, rounds=9)
    table = _run_py()._markdown(report, args)
    assert "median of 3 builds per variant and size" in table
    assert "| VC | VD | SR |" in table
    assert "| graph | 3000 | 10.00 | - |" + " 10.00 (1.00) |" * 5 + " +0.0 | +0.0 |" in table
    del report["scale"]["repeats"], report["scale"]["results"][0]["builds_s"]  # a round-5 report
    assert "ops 100 vs V0 100; the hand-written VB" in _only(_run_py().scale_verdicts(report["scale"]),
                                                              "graph 3000 vars, SR/V0")["detail"]
    assert "median of 1 builds" in _run_py()._markdown(report, args)


@pytest.mark.parametrize("argv", [["--scale-repeats", "0"], ["--runs", "0"], ["--memory-repeats", "-1"]])
def test_run_refuses_a_count_below_one_before_measuring(argv, tmp_path):
    with pytest.raises(SystemExit) as exited:
        _run_py().main(["--out", str(tmp_path / "r")] + argv)
    assert exited.value.code == 2
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_scale_benchmark_refuses_zero_builds():
    with pytest.raises(SystemExit) as exited:
        _script("bench_scale").main(["--repeats", "0"])
    assert exited.value.code == 2


@pytest.mark.parametrize("kind", ["VB", "VC", "VD"])
def test_hand_written_build_floors_clip_and_skip_as_their_names_say(mode, kind):
    # VB (reads every gradient on a bad step) still applies a bad step; VC and VD skip it
    from safegrad._tf import tf, tf1

    variables = [mode.variable(np.ones(4), "v{}".format(i)) for i in range(3)]
    optimizer = tf1.train.GradientDescentOptimizer(0.1)

    def step(gradient):
        grads = [gradient + tf.zeros_like(v) for v in variables]
        return _script("bench_scale")._hand_written(kind, optimizer, grads, variables)

    run = mode.step(step, np.ones(4, np.float32))
    run(np.ones(4, np.float32))  # global norm sqrt(12), clipped to 1
    healthy = 1.0 - 0.1 / np.sqrt(12.0)
    np.testing.assert_allclose(mode.read(variables[2]), np.full(4, healthy), rtol=1e-6)
    run(np.array([1.0, np.nan, 1.0, 1.0], np.float32))
    after = mode.read(variables[2])
    if kind == "VB":
        assert np.isnan(after).all()
    else:
        np.testing.assert_allclose(after, np.full(4, healthy), rtol=1e-6)


# --merge and --readme: rows re-measured later, and the README's results blocks


def _models_row(case, mode, ratio):
    return {"case": case, "mode": mode, "aa": 1.01, "ratios": {"SS/H": ratio},
            "times": {v: {"median_s": 0.005, "copies_s": [0.005] * 4} for v in ("H", "SS")}}


def _judged(tmp_path, rows, tensorflow="2.21.0"):
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"tensorflow": tensorflow, "models": {"results": rows}}))
    return path


def test_merged_rows_replace_the_same_rows_and_are_named_in_the_tables(tmp_path):
    earlier = _judged(tmp_path, [_models_row("MLP", "session", 1.01), _models_row("MLP", "function", 1.03)])
    later = tmp_path / "mlp.json"
    later.write_text(json.dumps({"tensorflow": "2.21.0", "results": [
        _models_row("MLP", "function", 1.015), _models_row("LM", "function", 1.0)]}))
    report = _run_py().main(["--judge", str(earlier), "--merge", str(later), "--out", str(tmp_path / "r")])
    rows = [(e["case"], e["mode"], e["ratios"]["SS/H"]) for e in report["models"]["results"]]
    assert rows == [("MLP", "session", 1.01), ("MLP", "function", 1.015), ("LM", "function", 1.0)]
    assert [v["met"] for v in report["targets"]] == [True, True, True]  # judged after the merge
    table = (tmp_path / "r.md").read_text()
    assert "merged (`run.py --judge ... --merge`): models MLP function, LM function (from mlp.json)." in table
    assert str(tmp_path) not in table  # no machine path in a committed table


@pytest.mark.parametrize("later, error", [
    ({"tensorflow": "1.15.5", "results": [_models_row("MLP", "session", 1.0)]}, "measured TensorFlow 1.15.5"),
    # bench_step.py's runs (model, mode, ratios) cannot be merged row by row
    ({"tensorflow": "2.21.0", "results": [{"model": "M1", "mode": "function", "ratios": {}}]}, "bench_step.py"),
    ({"tensorflow": "2.21.0", "results": [{"mode": "graph", "variables": 1000, "ratio_to_V0": {}}], "repeats": 3},
     "no scale part"),
])
def test_merge_refuses_rows_that_do_not_belong_to_the_report(tmp_path, capsys, later, error):
    earlier = _judged(tmp_path, [_models_row("MLP", "session", 1.01)])
    (tmp_path / "later.json").write_text(json.dumps(later))
    with pytest.raises(SystemExit) as exited:
        _run_py().main(["--judge", str(earlier), "--merge", str(tmp_path / "later.json"), "--out", str(tmp_path / "r")])
    assert exited.value.code == 2 and error in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("argv, error", [
    (["--merge", "mlp.json"], "--merge needs --judge"),
    (["--judge", "missing.json"], "--judge must name a report written by a benchmark"),
    (["--judge", "README.md"], "--judge must name a report written by a benchmark"),  # not JSON
    (["--readme", "missing.md"], "--readme must name a readable README file"),
    (["--readme", "tox.ini"], "has no line 'What the numbers say:'"),
])
def test_run_refuses_reports_and_readmes_it_cannot_use(argv, error, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(BENCHMARKS))
    with pytest.raises(SystemExit) as exited:
        _run_py().main(argv + ["--out", str(tmp_path / "r")])
    assert exited.value.code == 2 and error in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before measuring or writing anything


def test_scale_rows_merge_only_with_the_same_build_count():
    builds = {k: [10.0, 10.0, 10.0] for k in ("V0", "VB", "VC", "VD", "SR", "SS")}
    report = {"tensorflow": "2.21.0", "scale": _scale_report(builds)}
    once = {"tensorflow": "2.21.0", **_scale_report({k: [10.0] for k in builds})}
    with pytest.raises(ValueError, match="built each size 1 times, the judged report 3"):
        _run_py().merge_rows(report, once, "scale.json")
    again = {"tensorflow": "2.21.0", **_scale_report({k: [11.0, 11.0, 11.0] for k in builds})}
    assert _run_py().merge_rows(report, again, "/somewhere/scale.json") == ["graph 3000"]
    assert report["scale"]["results"][0]["build"]["V0"][0] == 11.0
    assert report["merged"] == [{"part": "scale", "rows": ["graph 3000"], "from": "scale.json"}]


README = """# x

Latest run.

TensorFlow 1.15.5.

old 1.15 tables

1 of 1 targets met.

TensorFlow 2.21.0.

old 2.21 tables

What the numbers say:

* prose
"""


def test_readme_block_of_one_version_is_rewritten_and_the_rest_kept():
    update = _run_py().update_readme
    new = update(README, "2.21.0", "TensorFlow 2.21.0.\n\nnew\n\n")
    assert new == README.replace("old 2.21 tables\n\n", "new\n\n")
    new = update(README, "1.15.5", "TensorFlow 1.15.5.\n\nnew\n\n")
    assert new == README.replace("old 1.15 tables\n\n1 of 1 targets met.\n\n", "new\n\n")
    # a version the README has no block for goes in version order
    new = update(README, "2.10.1", "TensorFlow 2.10.1.\n\nmid\n\n")
    assert new.index("TensorFlow 1.15.5.") < new.index("mid") < new.index("TensorFlow 2.21.0.")
    with pytest.raises(ValueError, match="What the numbers say:"):
        update("# no results\n", "2.21.0", "TensorFlow 2.21.0.\n")


def test_readme_summary_counts_the_targets_and_lists_those_not_met():
    verdict = _run_py()._verdict
    targets = [verdict("a", "x", 1.0, 1.1), verdict("b", "y", 1.3, 1.1, "ops 5", floor=1.4),
               verdict("c", "z", 1.03, 1.02, noise=1.04), verdict("d", "w", 3, 1)]
    assert _run_py().summary_lines(targets) == [
        "1 of 4 targets met; not met: 1 at the measured floor, 1 within the A/A, 1 other:", "",
        "* b (y): 1.300, at the floor; ops 5", "* c (z): 1.030, within A/A", "* d (w): 3, not met"]
    assert _run_py().summary_lines(targets[:1]) == ["1 of 1 targets met."]


@pytest.mark.parametrize("version", ["tf115", "tf221"])
def test_readme_shows_the_saved_results(version, tmp_path):
    # the README's results block is what `run.py --readme` writes from the saved report: rewriting
    # it from benchmarks/results changes nothing (else a result was saved without its README)
    readme = tmp_path / "README.md"
    original = open(os.path.join(os.path.dirname(BENCHMARKS), "README.md")).read()
    readme.write_text(original)
    saved = os.path.join(BENCHMARKS, "results", version)
    repeats = {"tf115": ["--memory-repeats", "5"], "tf221": []}[version]  # (what tox.ini runs)
    report = _run_py().main(["--judge", saved + ".json", "--out", str(tmp_path / version),
                             "--readme", str(readme)] + repeats)
    assert "\nTensorFlow {}.\n".format(report["tensorflow"]) in original
    assert readme.read_text() == original
    assert (tmp_path / (version + ".md")).read_text() == open(saved + ".md").read()


def _fix_row(mode, us):
    """bench_models' FIX row: H's step 0.4 ms, each variant ``us`` microseconds more."""
    times = {"H": {"median_s": 4e-4, "copies_s": [4e-4]}}
    times.update({v: {"median_s": 4e-4 + u * 1e-6, "copies_s": [4e-4 + u * 1e-6]} for v, u in us.items()})
    return {"case": "FIX", "mode": mode, "aa": 1.01, "times": times,
            "ratios": {"{}/H".format(v): t["median_s"] / 4e-4 for v, t in times.items() if v != "H"}}


def test_fixed_cost_is_context_for_the_mlp_targets_and_no_target_itself():
    mlp = _models_row("MLP", "function", 1.023)
    mlp["times"]["H"]["median_s"] = 0.005
    report = {"results": [mlp, _fix_row("function", {"SS": 100.0, "SSn": 60.0, "HS": 30.0}),
                          _fix_row("session", {"SS": 10.0})]}
    verdicts = _run_py().models_verdicts(report)
    assert [v["where"] for v in verdicts] == ["MLP function, SS/H"]  # FIX's 1.25 judged nowhere
    assert verdicts[0]["detail"].endswith(
        "; fixed cost per step beyond H (FIX): SS +100 us = 2.0 % of H's 5.00 ms, without its counters +60 us")
    report = {"tensorflow": "2.21.0", "models": report, "targets": verdicts}
    args = _run_py().main.__globals__["argparse"].Namespace(memory_repeats=3, runs=5, rounds=9)
    table = _run_py()._markdown(report, args)
    assert "| FIX | function | 1 | H 0.40, SS 0.50, SSn 0.46, HS 0.43 | SS +100 us, SSn +60 us, HS +30 us |" in table
    assert "SRn / SSn are SR / SS built without safegrad's counters" in table


@pytest.mark.parametrize("ablated", [False, True])
def test_fixed_cost_ablation_leaves_out_the_counters_and_nothing_else(mode, ablated):
    # SRn / SSn: the step still clips and applies; only safegrad's StepState stops counting
    import contextlib

    import safegrad
    from safegrad._state import StepState
    from safegrad._tf import tf, tf1

    variable = mode.variable(np.ones(4), "v")
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    shipped = StepState.record_applied, StepState.record_skipped
    with _script("bench_models")._without_counters() if ablated else contextlib.nullcontext():
        run = mode.step(lambda g: safegrad.apply_gradients(optimizer, [(g + tf.zeros_like(variable), variable)],
                                                           clip_norm=1.0, on_nonfinite="skip"),
                        np.ones(4, np.float32))
        run(np.full(4, 2.0, np.float32))  # (built, traced or run eagerly here) norm 4, clipped to 1
    np.testing.assert_allclose(mode.read(variable), np.full(4, 1.0 - 0.1 * 0.5), rtol=1e-6)
    assert mode.read(safegrad.step_state(optimizer).steps) == (0 if ablated else 1)
    assert (StepState.record_applied, StepState.record_skipped) == shipped  # restored after the build


def test_each_copy_builds_and_times_the_variants_in_a_rotated_order():
    # no variant is always first in its copy (built first, timed first in every round)
    rotated = _script("bench_models").rotated
    orders = [rotated(("H", "SR", "SS"), c) for c in range(4)]
    assert orders == [("H", "SR", "SS"), ("SR", "SS", "H"), ("SS", "H", "SR"), ("H", "SR", "SS")]
    assert sorted(o[0] for o in orders[:3]) == ["H", "SR", "SS"]
