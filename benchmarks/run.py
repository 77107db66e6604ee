"""Runs every benchmark, checks the performance targets, and writes <out>.json and <out>.md.

* ``bench_step.py`` several times (one process each): step time of clip-and-check variants;
* ``bench_models.py``: real models, loss scaling, the explain issue's additions, first-call traces;
* ``bench_scale.py``: graph build and ``tf.function`` trace time against the variable count;
* ``bench_memory.py``: peak resident memory of a step (one process per measurement).

Usage:  python benchmarks/run.py --out benchmarks/results/tf221 [--runs 5] [--rounds 9]
                                 [--parts step,models,scale,memory] [--readme README.md]
        (what `tox -e bench-tf221` and `tox -e bench-tf115` run: one after the other, never together)

Re-measuring some rows (e.g. ``bench_models.py --cases MLP --json mlp.json``) and judging them
with the rest of an earlier run:
        python benchmarks/run.py --judge benchmarks/results/tf221.json --merge mlp.json
                                 --out benchmarks/results/tf221 --readme README.md

``--readme`` rewrites the README's results block of this TensorFlow version (from its
"TensorFlow <version>." line to the next version's or to "What the numbers say:"): the tables,
the count of targets met and one line per target not met.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("step", "models", "scale", "memory")

# Step time (bench_step.py): (description, model, mode, ratio key, bound); medians over runs;
# modes missing on a TF version are skipped.
STEP_TARGETS = [
    ("raise <= 1.05 x tf.clip_by_global_norm", "M1", "session", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M1", "function", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M2", "session", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M2", "function", "SR/V1", 1.05),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M1", "session", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M1", "function", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M2", "session", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M2", "function", "SS/V1", 1.10),
    ("raise <= 1.1 x the norm read alone (L)", "M1", "session", "SR/L", 1.10),
    ("raise <= 1.1 x the norm read alone (L)", "M1", "function", "SR/L", 1.10),
    ("raise <= 1.1 x the norm read alone (L)", "M2", "session", "SR/L", 1.10),
    ("raise <= 1.1 x the norm read alone (L)", "M2", "function", "SR/L", 1.10),
    ("stretch: clip cost over V0 <= 1.2 x norm read", "M1", "session", "(SR-V0)/(L-V0)", 1.20),
    ("stretch: clip cost over V0 <= 1.2 x norm read", "M1", "function", "(SR-V0)/(L-V0)", 1.20),
]

MODEL_TARGETS = {  # bench_models.py: ratio key -> (description, bound)
    "SR/H": ("real model, raise <= 1.02 x the hand-clipped original", 1.02),
    "SS/H": ("real model, skip <= 1.02 x the hand-clipped original", 1.02),
    "S/K": ("loss scaling: SafeOptimizer(LSO) <= 1.05 x LSO with global_clipnorm (mixed_float16)", 1.05),
    "E/B": ("explain's diagnosis + logging (+ hook / callback) <= 1.01 x without them", 1.01),
}
# The cheapest hand-written check a real-model ratio is read against (bench_models: HR stops on
# a non-finite norm with check_numerics, HS skips with a tf.cond; neither names nor counts).
MODEL_FLOORS = {"SR/H": "HR/H", "SS/H": "HS/H"}
BUILD_BOUND = 1.10
MEMORY_BOUND = 1.05
# A target not met is "at the floor" when the hand-written step doing the same work (bench_scale's
# VB: reads every gradient on a bad step; VC: any skip; VD: both, as SS; bench_models' HR, HS)
# measures no better, within one build's spread (~5 % from build to build in bench_scale, whose
# ratios are medians of --scale-repeats builds; bench_models measures its A/A, used when smaller).
FLOOR_SPREAD = 1.05
# bench_scale's variants in the build table, after V0 (a report without one shows "-")
SCALE_COLUMNS = ("V1", "VB", "VC", "VD", "SR", "SS")


def _run(args):
    return subprocess.run([sys.executable] + args, check=True, text=True, stdout=subprocess.PIPE).stdout


def _script(name):
    return os.path.join(HERE, name)


def _run_for_json(script, args, tmp):
    """Runs a benchmark script with ``args`` (printing its output) and returns its --json report."""
    path = os.path.join(tmp, script.replace(".py", ".json"))
    print(_run([_script(script)] + args + ["--json", path]))
    with open(path) as f:
        return json.load(f)


def _verdict(target, where, value, bound, detail="", floor=None, noise=None, spread=FLOOR_SPREAD):
    """``floor``: what a hand-written step doing the same work measures, if known (``spread``: how
    far above it still counts as it); ``noise``: the ratio two builds of the same step measured
    (A/A), if known."""
    met = value <= bound
    # (only a floor that itself misses the bound can be what prevents meeting it)
    at_floor = not met and floor is not None and floor > bound and value <= floor * spread
    # (not met, and not told apart from 1.0 by this benchmark: a label, never counted as met)
    within_noise = not met and not at_floor and noise is not None and value <= noise
    return {"target": target, "where": where, "value": value, "bound": bound, "met": met,
            "at_floor": at_floor, "within_noise": within_noise, "detail": detail}


def step_part(args, tmp):
    runs = []
    for k in range(args.runs):
        path = os.path.join(tmp, "run{}.json".format(k))
        output = _run([_script("bench_step.py"), "--rounds", str(args.rounds), "--json", path])
        print(output if k == 0 else "(run {} of {} done)".format(k + 1, args.runs))
        sys.stdout.flush()
        with open(path) as f:
            runs.append(json.load(f))
    spread = {}  # (model, mode, ratio) -> [value of each run]
    for run in runs:
        for entry in run["results"]:
            for key, value in entry["ratios"].items():
                spread.setdefault((entry["model"], entry["mode"], key), []).append(value)
    summary = {"|".join(k): {"min": min(v), "median": statistics.median(v), "max": max(v)} for k, v in spread.items()}
    return {"runs": runs, "ratio_spread": summary, "tensorflow": runs[0]["tensorflow"]}


def step_verdicts(report):
    summary, runs = report["ratio_spread"], report["runs"]
    verdicts = []
    for text, model, mode, key, bound in STEP_TARGETS:
        s = summary.get("|".join((model, mode, key)))
        if s:
            verdicts.append(_verdict(text, "{} {}, {}".format(model, mode, key), s["median"], bound,
                                     "min {:.3f}, max {:.3f} over {} runs".format(s["min"], s["max"], len(runs))))
    return verdicts


def models_part(args, tmp):
    return _run_for_json("bench_models.py", ["--rounds", str(args.rounds)], tmp)


def fixed_cost_us(entry):
    """FIX rows: each variant's time per step beyond the first variant's (H), in microseconds."""
    times, first = entry["times"], next(iter(entry["times"]))
    return {v: 1e6 * (t["median_s"] - times[first]["median_s"]) for v, t in times.items() if v != first}


def _fixed_cost_detail(fixed, variant, entry):
    """What FIX measured of ``variant``'s fixed cost, as a share of the MLP's hand-clipped step."""
    cost = fixed_cost_us(fixed)
    if variant not in cost:
        return ""
    step_us = 1e6 * entry["times"]["H"]["median_s"]
    without = cost.get(variant + "n")
    return "; fixed cost per step beyond H (FIX): {} {:+.0f} us = {:.1f} % of H's {:.2f} ms{}".format(
        variant, cost[variant], 100 * cost[variant] / step_us, step_us / 1e3,
        ", without its counters {:+.0f} us".format(without) if without is not None else "")


def models_verdicts(report):
    verdicts = []
    # FIX (the MLP's step with next to no arithmetic) is context for the MLP's targets, none itself
    fixed = {e["mode"]: e for e in report["results"] if e["case"] == "FIX"}
    for entry in report["results"]:
        if entry["case"] == "FIX":
            continue
        ratios = entry["ratios"]
        for key, value in ratios.items():
            if key not in MODEL_TARGETS:  # (a hand-written floor: read beside the target it bounds)
                continue
            target, bound = MODEL_TARGETS[key]
            floor = ratios.get(MODEL_FLOORS.get(key))
            detail = "A/A {:.3f} (two halves of one step's builds)".format(entry["aa"])
            if floor is not None:
                detail += "; the hand-written {} {:.3f}".format(MODEL_FLOORS[key], floor)
            if entry["case"] == "MLP" and entry["mode"] in fixed:
                detail += _fixed_cost_detail(fixed[entry["mode"]], key.split("/")[0], entry)
            verdicts.append(_verdict(target, "{} {}, {}".format(entry["case"], entry["mode"], key), value,
                                     bound, detail, floor=floor, noise=entry["aa"],
                                     spread=min(entry["aa"], FLOOR_SPREAD)))
        traces = {v: t["traces"] for v, t in entry["times"].items() if "traces" in t}
        if entry["case"] in ("LM", "MLP") and "H" in traces:
            worst = max(traces[v] for v in traces if v.startswith("S"))  # (safegrad's: SR, SS)
            verdicts.append(_verdict("first call: traced no more often than without safegrad",
                                     "{} {}, traces".format(entry["case"], entry["mode"]), worst, traces["H"],
                                     " ".join("{} {}".format(v, n) for v, n in sorted(traces.items()))))
    return verdicts


def _ratios_cell(entry):
    """A case's ratios; FIX's (no target) as each variant's time per step beyond the first's."""
    if entry["case"] == "FIX":
        return ", ".join("{} {:+.0f} us".format(v, us) for v, us in fixed_cost_us(entry).items())
    return ", ".join("{} **{:.3f}**".format(k, r) for k, r in entry["ratios"].items())


def _ops_cell(entry):
    """The ops each variant ran in one step beyond the first variant's (bench_models' MLP cases)."""
    if "ops_run" not in entry:
        return "-"
    first = next(iter(entry["ops_run"]))
    return "{} {}; ".format(first, entry["ops_run"][first]) + ", ".join(
        "{} {:+d}".format(v, n - entry["ops_run"][first]) for v, n in entry["ops_run"].items() if v != first)


def scale_part(args, tmp):
    return _run_for_json("bench_scale.py", ["--sizes", args.scale_sizes, "--repeats", str(args.scale_repeats)],
                         tmp)


def scale_verdicts(report):
    verdicts = []
    for entry in report["results"]:
        ratio, build = entry["ratio_to_V0"], entry["build"]
        # (SS names and skips: its floor is VD, which does both; reports before VD have only VC)
        for kind, floor in (("SR", "VB"), ("SS", "VD" if "VD" in ratio else "VC")):
            context = "ops {} vs V0 {}".format(build[kind][1], build["V0"][1]) + _build_spread(entry, kind)
            if floor in ratio:
                context += "; the hand-written {} builds in {:.3f} x V0".format(floor, ratio[floor])
            verdicts.append(_verdict("build <= 1.10 x plain minimize", "{} {} vars, {}/V0".format(
                entry["mode"], entry["variables"], kind), ratio[kind], BUILD_BOUND, context, ratio.get(floor)))
            if entry["mode"] == "function":
                verdicts.append(_verdict("first call traced once", "function {} vars, {} traces".format(
                    entry["variables"], kind), build[kind][2], 1))
    return verdicts


def _build_spread(entry, kind):
    """The fastest and slowest of the builds a scale ratio is the median of (reports before
    round 6 built each size once and have none)."""
    builds = entry.get("builds_s")
    if not builds or len(builds[kind]) < 2:
        return ""
    return "; {} builds: {} {:.2f}-{:.2f} s, V0 {:.2f}-{:.2f} s".format(
        len(builds[kind]), kind, min(builds[kind]), max(builds[kind]), min(builds["V0"]), max(builds["V0"]))


def memory_part(args, tmp):
    return _run_for_json("bench_memory.py", ["--repeats", str(args.memory_repeats)], tmp)


def memory_verdicts(report):
    verdicts = []
    for entry in report["results"]:
        for key, value in entry["ratios"].items():
            verdicts.append(_verdict("peak memory <= 1.05 x the tf.clip_by_global_norm step",
                                     "{} {}, {}".format(entry["model"], entry["mode"], key), value, MEMORY_BOUND,
                                     "peak MiB " + ", ".join("{} {:.0f}".format(v, m)
                                                             for v, m in sorted(entry["peak_mib"].items()))
                                     + "; ablations: " + _memory_ablations(entry["peak_mib"])))
    return verdicts


def _memory_ablations(peak):
    """SN: safegrad's step without the diagnosis (no cond around the norm, no If)."""
    return "SN (no diagnosis, no If) / V1 {:.3f}".format(peak["SN"] / peak["V1"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path prefix of the .json/.md results")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale-sizes", default="1000,3000,10000")
    parser.add_argument("--scale-repeats", type=int, default=3, help="builds per variant and size (median)")
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS), help="which benchmarks to run")
    parser.add_argument("--judge", metavar="OUT.json", default=None,
                        help="measure nothing: judge the targets of an earlier run's report again "
                             "(give the --runs/--rounds/--memory-repeats it ran with)")
    parser.add_argument("--merge", metavar="PART.json", action="append", default=[],
                        help="with --judge: rows a benchmark script re-measured (its --json report) "
                             "replace the same rows of the judged report; repeatable")
    parser.add_argument("--readme", metavar="README.md", default=None,
                        help="also rewrite this TensorFlow version's results block in the README")
    args = parser.parse_args(argv)
    if args.merge and not args.judge:
        parser.error("--merge needs --judge (the report the re-measured rows go into). Received: --merge {}".format(
            " --merge ".join(args.merge)))
    if args.readme:  # (checked before measuring: a run takes an hour)
        try:
            with open(args.readme) as f:
                ends = "\n" + README_END in f.read()
        except OSError as error:
            parser.error("--readme must name a readable README file. Received: --readme {} ({})".format(
                args.readme, error))
        if not ends:
            parser.error("--readme: {} has no line {!r} ending the results blocks".format(args.readme, README_END))
    for name in ("runs", "rounds", "scale_repeats", "memory_repeats"):
        if getattr(args, name) < 1:  # refused before any part runs, not after the others' hour
            parser.error("--{0} must be >= 1. Received: --{0} {1}".format(name.replace("_", "-"), getattr(args, name)))
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        parser.error("--parts takes some of {}; received {!r}".format(",".join(PARTS), args.parts))

    if args.judge:
        report = _read_report(parser, "--judge", args.judge)
        for path in args.merge:
            try:
                merge_rows(report, _read_report(parser, "--merge", path), path)
            except ValueError as error:
                parser.error(str(error))
    else:
        report = {}
        with tempfile.TemporaryDirectory() as tmp:
            for part in parts:
                report[part] = globals()[part + "_part"](args, tmp)
                report.setdefault("tensorflow", report[part].get("tensorflow"))
    report["targets"] = [v for part in PARTS if part in report for v in globals()[part + "_verdicts"](report[part])]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    markdown = _markdown(report, args)
    with open(args.out + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        with open(args.readme, "w") as f:
            f.write(update_readme(text, report["tensorflow"], readme_block(markdown, report["targets"])))
        print("{}: the TensorFlow {} results block rewritten".format(args.readme, report["tensorflow"]))
    return report


# --------------------------------------------------------------------------------------------
# --merge: rows re-measured by one benchmark script replace the same rows of an earlier report

# part -> (the fields naming a row, a field only that script's rows have, the benchmark script
# whose --json report has such rows; bench_step's rows also have a model and a mode)
MERGEABLE = {
    "models": (("case", "mode"), "aa", "bench_models.py"),
    "scale": (("mode", "variables"), "ratio_to_V0", "bench_scale.py"),
    "memory": (("model", "mode"), "peak_mib", "bench_memory.py"),
}


def _row_key(part, entry):
    return tuple(entry[k] for k in MERGEABLE[part][0])


def _part_of(measured, source):
    """Which part a benchmark script's --json report holds (its rows' fields tell)."""
    rows = measured.get("results") if isinstance(measured, dict) else None
    if rows:
        for part, (fields, marker, _) in MERGEABLE.items():
            if all(all(k in row for k in fields + (marker,)) for row in rows):
                return part
    raise ValueError(
        "--merge takes the --json report of {}. Received: {} (no rows of any of them; bench_step.py's "
        "runs cannot be merged: re-run the step part)".format(
            ", ".join(script for _, _, script in MERGEABLE.values()), source))


def merge_rows(report, measured, source):
    """``report`` with the rows of ``measured`` (a benchmark script's --json report, read from
    ``source``) in place of its rows of the same case, mode, size; rows it lacks are appended.
    Returns the names of the merged rows; ``report["merged"]`` lists them, with ``source``'s file
    name, for the tables to say which rows come from a later run."""
    part = _part_of(measured, source)
    if measured.get("tensorflow") != report.get("tensorflow"):
        raise ValueError("--merge: {} measured TensorFlow {}, the judged report {}".format(
            source, measured.get("tensorflow"), report.get("tensorflow")))
    if part not in report:
        raise ValueError("--merge: the judged report has no {} part to merge {} into".format(part, source))
    target = report[part]
    if part == "scale" and measured.get("repeats", 1) != target.get("repeats", 1):
        raise ValueError("--merge: {} built each size {} times, the judged report {} (its table states one "
                         "count)".format(source, measured.get("repeats", 1), target.get("repeats", 1)))
    rows = {_row_key(part, e): i for i, e in enumerate(target["results"])}
    names = []
    for entry in measured["results"]:
        key = _row_key(part, entry)
        if key in rows:
            target["results"][rows[key]] = entry
        else:
            rows[key] = len(target["results"])
            target["results"].append(entry)
        names.append(" ".join(str(k) for k in key))
    report.setdefault("merged", []).append({"part": part, "rows": names, "from": os.path.basename(source)})
    return names


# --------------------------------------------------------------------------------------------
# --readme: the README's results block of this TensorFlow version


def _counts(targets):
    """How many targets are met, not met at the floor, not met within the A/A, not met otherwise."""
    count = {k: sum(v[k] for v in targets) for k in ("met", "at_floor", "within_noise")}
    count["other"] = len(targets) - sum(count.values())
    return count


def _value_text(verdict):
    return "{:.3f}".format(verdict["value"]) if isinstance(verdict["value"], float) else str(verdict["value"])


def _missed_label(verdict):
    """Why a target not met is not: at the floor, within A/A, or neither."""
    return "at the floor" if verdict["at_floor"] else "within A/A" if verdict["within_noise"] else None


def summary_lines(targets):
    """The count of targets met, and one line per target not met (the README's summary)."""
    count = _counts(targets)
    if count["met"] == len(targets):
        return ["{} of {} targets met.".format(count["met"], len(targets))]
    lines = ["{} of {} targets met; not met: {} at the measured floor, {} within the A/A, {} other:".format(
        count["met"], len(targets), count["at_floor"], count["within_noise"], count["other"]), ""]
    for v in targets:
        if not v["met"]:
            lines.append("* {} ({}): {}, {}{}".format(v["target"], v["where"], _value_text(v),
                                                      _missed_label(v) or "not met",
                                                      "; " + v["detail"] if v["detail"] else ""))
    return lines


README_END = "What the numbers say:"


def readme_block(markdown, targets):
    """A version's block in the README: its results tables (the markdown up to the targets table)
    and the summary of the targets."""
    tables = markdown.split("| target | where |")[0].rstrip("\n")
    return tables + "\n\n" + "\n".join(summary_lines(targets)) + "\n\n"


def update_readme(text, tensorflow, block):
    """``text`` (the README) with the block of TensorFlow ``tensorflow`` replaced by ``block``, or
    inserted before the next version's block or "What the numbers say:"."""
    start_line = "\nTensorFlow {}.\n".format(tensorflow)
    end = text.find("\n" + README_END)
    if end < 0:
        raise ValueError("--readme: the README has no line {!r} ending the results blocks".format(README_END))
    blocks = [(m.start() + 1, m.group(1)) for m in re.finditer(r"\nTensorFlow ([0-9][^\n]*)\.\n", text[:end])]
    found = text.find(start_line, 0, end)
    if found >= 0:
        start = found + 1
        following = [s for s, _ in blocks if s > start]
        stop = following[0] if following else end + 1
        return text[:start] + block + text[stop:]
    later = [s for s, v in blocks if _version(v) > _version(tensorflow)]
    at = later[0] if later else end + 1
    return text[:at] + block + text[at:]


def _version(text):
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.\-]", text)[:3])


def _read_report(parser, option, path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        parser.error("{} must name a report written by a benchmark (--json). Received: {} {} ({})".format(
            option, option, path, error))


def _markdown(report, args):
    lines = ["TensorFlow {}.".format(report["tensorflow"]), ""]
    if "step" in report:
        lines += ["Step time (`bench_step.py`, {} runs x {} rounds): ratios as min / **median** / max over "
                  "runs.".format(args.runs, args.rounds), ""]
        keys = ["V1", "V3", "V4", "SR", "SS", "L", "SR/V1", "SS/V1", "SR/L", "SR/V3", "L/V3", "(SR-V0)/(L-V0)",
                "XS/X1"]
        lines += ["| model | mode | " + " | ".join(k + "/V0" if "/" not in k else k for k in keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        spread = report["step"]["ratio_spread"]
        for model, mode in sorted({tuple(k.split("|")[:2]) for k in spread}):
            cells = []
            for key in keys:
                s = spread.get("|".join((model, mode, key)))
                cells.append("{:.2f} / **{:.2f}** / {:.2f}".format(s["min"], s["median"], s["max"]) if s else "-")
            lines.append("| {} | {} | {} |".format(model, mode, " | ".join(cells)))
        lines.append("")
    if "models" in report:
        lines += ["Real models, loss scaling, explain (`bench_models.py`, {} rounds): builds of each variant "
                  "(copies, interleaved), ms per step (median over the copies), ratios, A/A (the first "
                  "variant's builds in two halves, even and odd: the median of one over the other's), "
                  "first-call traces.".format(args.rounds)
                  + (" FIX, the MLP's step at 8-4-4-2 units (next to no arithmetic), shows instead of ratios "
                     "each variant's fixed cost per step beyond H; SRn / SSn are SR / SS built without "
                     "safegrad's counters (an ablation)."
                     if any(e["case"] == "FIX" for e in report["models"]["results"]) else ""), "",
                  "| case | mode | builds | ms per step | ratios | A/A | traces | ops run beyond the first |",
                  "|---|---|---|---|---|---|---|---|"]
        for entry in report["models"]["results"]:
            times = entry["times"]
            lines.append("| {} | {} | {} | {} | {} | {:.3f} | {} | {} |".format(
                entry["case"], entry["mode"], len(next(iter(times.values()))["copies_s"]),
                ", ".join("{} {:.2f}".format(v, 1e3 * t["median_s"]) for v, t in times.items()),
                _ratios_cell(entry), entry["aa"],
                ", ".join("{} {}".format(v, t["traces"]) for v, t in times.items() if "traces" in t) or "-",
                _ops_cell(entry)))
        lines.append("")
    if "scale" in report:
        lines += ["Build (`bench_scale.py`, median of {} builds per variant and size, interleaved): seconds to "
                  "build the step (Session graph) or trace it (`tf.function`), ratio to V0 in brackets.".format(
                      report["scale"].get("repeats", 1)), "",
                  "| mode | variables | V0 | " + " | ".join(SCALE_COLUMNS) + " | SR ops/var over V0 | SS ops/var "
                  "over V0 |", "|---|---|---|" + "---|" * (len(SCALE_COLUMNS) + 2)]
        for entry in report["scale"]["results"]:
            build, ratio = entry["build"], entry["ratio_to_V0"]
            cells = ["{:.2f}".format(build["V0"][0])]
            cells += ["{:.2f} ({:.2f})".format(build[k][0], ratio[k]) if k in build else "-"
                      for k in SCALE_COLUMNS]
            lines.append("| {} | {} | {} | {:+.1f} | {:+.1f} |".format(
                entry["mode"], entry["variables"], " | ".join(cells),
                entry["ops_per_variable"]["SR"], entry["ops_per_variable"]["SS"]))
        lines.append("")
    if "memory" in report:
        arenas = report["memory"].get("malloc_arena_max")
        lines += ["Peak resident memory (`bench_memory.py`, one process each, median of {}{}): MiB, and "
                  "the rise over the built step.".format(
                      args.memory_repeats, ", MALLOC_ARENA_MAX={}".format(arenas) if arenas else ""), "",
                  "| model | mode | V1 | SR | SS | SN | SR/V1 | SS/V1 | SN/V1 |", "|---" * 9 + "|"]
        for entry in report["memory"]["results"]:
            peak, step = entry["peak_mib"], entry["step_mib"]
            lines.append("| {} | {} | {} | {:.3f} | {:.3f} | {:.3f} |".format(
                entry["model"], entry["mode"],
                " | ".join("{:.0f} (+{:.0f})".format(peak[v], max(step[v], 0)) for v in ("V1", "SR", "SS", "SN")),
                entry["ratios"]["SR/V1"], entry["ratios"]["SS/V1"], peak["SN"] / peak["V1"]))
        lines.append("")
    if report.get("merged"):
        lines += ["Rows re-measured in a later run and merged (`run.py --judge ... --merge`): " + "; ".join(
            "{} {} (from {})".format(m["part"], ", ".join(m["rows"]), m["from"]) for m in report["merged"])
            + ".", ""]
    lines += ["| target | where | measured | bound | met | context |", "|---|---|---|---|---|---|"]
    for v in report["targets"]:
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            v["target"], v["where"], _value_text(v), v["bound"],
            "yes" if v["met"] else "no: " + _missed_label(v) if _missed_label(v) else "**no**", v["detail"]))
    count = _counts(report["targets"])
    lines += ["", "{} of {} targets met. Not met: {} at the measured floor (the hand-written step doing the "
              "same work, within {:.0f} % or the case's A/A if less), {} within the A/A (two halves of one "
              "step's builds differ as much), "
              "{} other.".format(count["met"], len(report["targets"]), count["at_floor"], 100 * (FLOOR_SPREAD - 1),
                                 count["within_noise"], count["other"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
