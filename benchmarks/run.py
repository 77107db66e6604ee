"""Runs the step benchmark several times (one process each) and the build-scale benchmark, checks
the performance targets, and writes <out>.json and <out>.md.

Usage:  python benchmarks/run.py --out benchmarks/results/tf221 [--runs 3] [--rounds 9]
        (what `tox -e bench-tf115,bench-tf221` runs)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (description, model, mode, ratio key, bound[, TF major it applies to]); modes missing on a TF
# version are skipped.
TARGETS = [
    ("raise <= 1.05 x tf.clip_by_global_norm", "M1", "session", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M1", "function", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M2", "session", "SR/V1", 1.05),
    ("raise <= 1.05 x tf.clip_by_global_norm", "M2", "function", "SR/V1", 1.05),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M1", "session", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M1", "function", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M2", "session", "SS/V1", 1.10),
    ("skip <= 1.10 x tf.clip_by_global_norm", "M2", "function", "SS/V1", 1.10),
    ("raise <= 0.6 x tutorial pattern", "M1", "session", "SR/V3", 0.60, 1),
    ("(context) the norm read alone vs tutorial pattern", "M1", "session", "L/V3", 0.60, 1),
    ("stretch: clip cost over V0 <= 1.2 x norm read", "M1", "session", "(SR-V0)/(L-V0)", 1.20),
    ("stretch: clip cost over V0 <= 1.2 x norm read", "M1", "function", "(SR-V0)/(L-V0)", 1.20),
]


def _run(args):
    return subprocess.run([sys.executable] + args, check=True, text=True,
                          stdout=subprocess.PIPE).stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path prefix of the .json/.md results")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale-sizes", default="100,1000,3000")
    args = parser.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            path = os.path.join(tmp, "run{}.json".format(k))
            output = _run([os.path.join(HERE, "bench_step.py"), "--rounds", str(args.rounds), "--json", path])
            print(output if k == 0 else "(run {} of {} done)".format(k + 1, args.runs))
            sys.stdout.flush()
            with open(path) as f:
                runs.append(json.load(f))
        scale_path = os.path.join(tmp, "scale.json")
        print(_run([os.path.join(HERE, "bench_scale.py"), "--sizes", args.scale_sizes, "--json", scale_path]))
        with open(scale_path) as f:
            scale = json.load(f)

    # ratio -> [value of each run], per (model, mode)
    spread = {}
    for run in runs:
        for entry in run["results"]:
            for key, value in entry["ratios"].items():
                spread.setdefault((entry["model"], entry["mode"], key), []).append(value)

    def stats(values):
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    summary = {"|".join(k): stats(v) for k, v in spread.items()}
    verdicts = []
    tf_major = int(runs[0]["tensorflow"].split(".")[0])
    for target in TARGETS:
        text, model, mode, key, bound = target[:5]
        values = spread.get((model, mode, key))
        if not values or (len(target) > 5 and target[5] != tf_major):
            continue
        s = stats(values)
        verdicts.append({"target": text, "model": model, "mode": mode, "ratio": key, "bound": bound,
                         "min": s["min"], "median": s["median"], "max": s["max"], "met": s["median"] <= bound})

    report = {"runs": runs, "ratio_spread": summary, "targets": verdicts, "scale": scale,
              "tensorflow": runs[0]["tensorflow"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    markdown = _markdown(report, args.runs, args.rounds)
    with open(args.out + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
    return report


def _markdown(report, runs, rounds):
    lines = ["TensorFlow {}: {} runs x {} rounds; ratios as min / median / max over runs.".format(
        report["tensorflow"], runs, rounds), ""]
    lines += ["| model | mode | V1/V0 | V3/V0 | V4/V0 | SR/V0 | SS/V0 | L/V0 | SR/V1 | SS/V1 | SR/V3 | L/V3 "
              "| (SR-V0)/(L-V0) | XS/X1 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = ["V1", "V3", "V4", "SR", "SS", "L", "SR/V1", "SS/V1", "SR/V3", "L/V3", "(SR-V0)/(L-V0)", "XS/X1"]
    spread = report["ratio_spread"]
    pairs = sorted({tuple(k.split("|")[:2]) for k in spread})
    for model, mode in pairs:
        cells = []
        for key in keys:
            s = spread.get("|".join((model, mode, key)))
            cells.append("{:.2f} / **{:.2f}** / {:.2f}".format(s["min"], s["median"], s["max"]) if s else "-")
        lines.append("| {} | {} | {} |".format(model, mode, " | ".join(cells)))
    lines += ["", "| target | model | mode | median | met |", "|---|---|---|---|---|"]
    for v in report["targets"]:
        lines.append("| {} | {} | {} | {:.3f} (min {:.3f}, max {:.3f}) | {} |".format(
            v["target"], v["model"], v["mode"], v["median"], v["min"], v["max"], "yes" if v["met"] else "**no**"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
