"""Peak resident memory of a training step: safegrad against ``tf.clip_by_global_norm``.

Peak memory cannot be told apart inside one process, so each measurement is a fresh process
that builds ONE variant of ``bench_step.py``'s step (M1: 200 variables of 256x256 with SGD; M2:
an MLP 784-2048-2048-10 with Adam), runs it ``--steps`` times and reports the process's peak
resident set size (``ru_maxrss``) and its resident size before the first step. Variants: V1
(``tf.clip_by_global_norm``), SR / SS (``safegrad.clip_and_apply`` in raise / skip mode), and SN,
an ablation that shows what the diagnosis costs: SS with the global norm's lazy diagnosis branch
patched out (in that process only: no cond around the norm, no If op in the graph - and no way to
name a non-finite gradient or to compute an overflowing norm exactly, so not a usable step). The
variants alternate in order over ``--repeats`` rounds; the medians are reported.

Every process runs with ``MALLOC_ARENA_MAX=2`` (``--malloc-arena-max``; 0 keeps glibc's
default): with glibc's default number of malloc arenas, TF 1.15 processes of the SAME variant
settle, before the first step, in one of two heap layouts 30-50 MiB apart (M1 V1: 458 or 508 MiB
resident when built), so a median of 5 moved by ~5 % from run to run and could not decide a 5 %
bound. With two arenas every variant's processes agree within ~2 %.

Usage:  python benchmarks/bench_memory.py [--models M1,M2] [--modes session,function]
                                          [--repeats 3] [--steps 20] [--malloc-arena-max 2]
                                          [--json out.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("V1", "SR", "SS", "SN")


def _resident_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def one(model, mode, variant, steps):
    """In this process: build, run, print {"peak_kib", "before_kib"} as JSON."""
    sys.path.insert(0, HERE)
    import bench_step
    from safegrad._tf import TF_VERSION, tf1

    if TF_VERSION < (2, 0):
        tf1.disable_eager_execution()
    if variant == "SN":  # the ablation: the success path of inspect_gradients only
        from safegrad import _norm

        _norm.lazy_cond = lambda pred, fast, slow: fast()
        variant = "SS"
    maker = bench_step.SessionStep if mode == "session" else bench_step.FunctionStep
    step = maker(bench_step.MODELS[model](), variant)
    before = _resident_kib()
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_kib": peak, "before_kib": before}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="M1,M2")
    parser.add_argument("--modes", default=None, help="default: session (TF1), session,function (TF2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--malloc-arena-max", type=int, default=2,
                        help="MALLOC_ARENA_MAX of every measured process (0: glibc's default)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "MODE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.malloc_arena_max < 0:
        parser.error("--malloc-arena-max must be >= 0 (0: glibc's default); received {}".format(
            args.malloc_arena_max))
    if args.one:
        return one(*args.one, steps=args.steps)

    from safegrad._tf import TF_VERSION, TF_VERSION_STRING

    modes = (args.modes or ("session,function" if TF_VERSION >= (2, 0) else "session")).split(",")
    env = dict(os.environ)
    env.pop("MALLOC_ARENA_MAX", None)
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    report = {"tensorflow": TF_VERSION_STRING, "steps": args.steps, "repeats": args.repeats,
              "malloc_arena_max": args.malloc_arena_max, "results": []}
    print("peak resident memory of one process per measurement, TensorFlow {} (median of {}; "
          "MALLOC_ARENA_MAX={})".format(TF_VERSION_STRING, args.repeats, args.malloc_arena_max or "default"))
    for model in args.models.split(","):
        for mode in modes:
            samples = {v: [] for v in VARIANTS}
            for k in range(args.repeats):
                for variant in VARIANTS[k % len(VARIANTS):] + VARIANTS[:k % len(VARIANTS)]:
                    out = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--one", model, mode, variant,
                         "--steps", str(args.steps)],
                        check=True, text=True, stdout=subprocess.PIPE, env=env,
                    ).stdout
                    samples[variant].append(json.loads(out.strip().splitlines()[-1]))
            peak = {v: statistics.median(s["peak_kib"] for s in samples[v]) / 1024.0 for v in VARIANTS}
            step = {v: statistics.median(s["peak_kib"] - s["before_kib"] for s in samples[v]) / 1024.0
                    for v in VARIANTS}
            ratios = {"{}/V1".format(v): peak[v] / peak["V1"] for v in ("SR", "SS")}
            report["results"].append({"model": model, "mode": mode, "peak_mib": peak, "step_mib": step,
                                      "ratios": ratios, "samples": samples})
            print("{} {}: peak MiB ".format(model, mode)
                  + "  ".join("{} {:.0f}".format(v, peak[v]) for v in VARIANTS)
                  + "  | above the built step " + "  ".join("{} {:.0f}".format(v, step[v]) for v in VARIANTS)
                  + "  | " + "  ".join("{} {:.3f}".format(k, r) for k, r in ratios.items()))
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


if __name__ == "__main__":
    main()
