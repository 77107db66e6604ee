"""``python -m safegrad.demo``: an exploding-gradient regression, without and with safegrad.

The model is the classic way to get NaN losses (see the project's seed articles): inputs scaled by
100, weights initialised in [10, 20], a two-layer leaky-ReLU network trained with plain SGD on a
mean-squared error, in a TF1-style ``tf.compat.v1.Session`` loop. One batch (``--poison-step``)
also carries a corrupt record (a NaN feature), as real data pipelines sometimes do.

* Plain SGD (``optimizer.minimize(loss)``) overflows within a few steps and the loss stays NaN.
* ``safegrad.clip_and_apply(optimizer, loss, clip_norm=1.0, on_nonfinite="skip")`` keeps every
  step finite, brings the loss down by orders of magnitude, and skips the poisoned batch.
* ``safegrad.explain_session`` then says why: where plain SGD's first NaN/Inf was born, and which
  op, record and feature made safegrad skip its step.

The script prints one table (step, loss, global norm, clipped?, skipped? for each run) and the two
reports, and exits with status 0 only if all of it happened, so it doubles as an end-to-end check.
"""

import argparse
import math
import sys

import numpy as np

import safegrad
from safegrad._tf import TF_VERSION_STRING, tf, tf1


def make_problem(seed=0, batch=64, features=8, hidden=16):
    """Numpy data and initial weights of the exploding-gradient regression."""
    rng = np.random.RandomState(seed)
    x = (rng.rand(batch, features) * 100.0).astype(np.float32)  # inputs scaled x100
    y = (x.sum(axis=1, keepdims=True) / 100.0).astype(np.float32)
    w1 = rng.uniform(10.0, 20.0, (features, hidden)).astype(np.float32)  # weights in [10, 20]
    w2 = rng.uniform(10.0, 20.0, (hidden, 1)).astype(np.float32)
    return {"x": x, "y": y, "w1": w1, "w2": w2}


def poisoned(x):
    """The same batch with one corrupt record (a NaN feature)."""
    x = x.copy()
    x[3, 5] = np.nan
    return x


def forward(x, w1, w2):
    """The model; works on tensors and variables alike."""
    return tf.matmul(tf.nn.leaky_relu(tf.matmul(x, w1), alpha=0.1), w2)


def mse(prediction, y):
    return tf.reduce_mean(tf.square(prediction - y))


def _train(problem, steps, learning_rate, poison_step, use_safegrad, clip_norm):
    """Runs one Session loop; returns a list of per-step dicts and the ``NonFiniteReport`` of its
    first non-finite step (None if there was none)."""
    rows = []
    report = None
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, problem["x"].shape, name="x")
        w1 = tf1.Variable(problem["w1"], name="dense_1/kernel")
        w2 = tf1.Variable(problem["w2"], name="dense_2/kernel")
        loss = mse(forward(x, w1, w2), problem["y"])
        optimizer = tf1.train.GradientDescentOptimizer(learning_rate)
        if use_safegrad:
            train_op = safegrad.clip_and_apply(
                optimizer, loss, clip_norm=clip_norm, on_nonfinite="skip"
            )
            outputs = safegrad.step_outputs(train_op)  # this step's values, fetched with it
            stats = [outputs.global_norm, outputs.clipped, outputs.skipped]
        else:
            grads_and_vars = optimizer.compute_gradients(loss)
            norm = tf.linalg.global_norm([g for g, _ in grads_and_vars])
            train_op = optimizer.apply_gradients(grads_and_vars)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for step in range(steps):
                batch = poisoned(problem["x"]) if step == poison_step else problem["x"]
                if use_safegrad:
                    _, loss_value, norm_value, clipped, skipped = sess.run([train_op, loss] + stats, {x: batch})
                    if skipped and report is None:  # replayed without its update
                        report = safegrad.explain_session(sess, train_op, {x: batch})
                else:
                    if report is None:  # the step about to run, replayed on the same weights
                        values = sess.run([loss, norm], {x: batch})
                        if not all(math.isfinite(v) for v in values):
                            report = safegrad.explain_session(sess, [loss, norm], {x: batch})
                    _, loss_value, norm_value = sess.run([train_op, loss, norm], {x: batch})
                    clipped = skipped = False
                rows.append(
                    {
                        "step": step,
                        "loss": float(loss_value),
                        "norm": float(norm_value),
                        "clipped": bool(clipped),
                        "skipped": bool(skipped),
                    }
                )
    return rows, report


def _shown_steps(steps, poison_step, every):
    shown = set(range(min(6, steps))) | set(range(0, steps, every)) | {steps - 1}
    if 0 <= poison_step < steps:
        shown |= {poison_step - 1, poison_step, poison_step + 1}
    return sorted(s for s in shown if 0 <= s < steps)


def _indented(report):
    return "  " + str(report).replace("\n", "\n  ") if report is not None else "  (no NaN/Inf found)"


def _yes(flag):
    return "yes" if flag else "-"


def run(steps=100, learning_rate=1.0, clip_norm=1.0, poison_step=40, every=10, out=sys.stdout):
    """Trains both runs and prints the table; returns True if the demo showed what it claims."""
    problem = make_problem()
    plain, plain_report = _train(problem, steps, learning_rate, poison_step, False, clip_norm)
    safe, safe_report = _train(problem, steps, learning_rate, poison_step, True, clip_norm)

    def write(line=""):
        out.write(line + "\n")

    write(
        "safegrad {} demo on TensorFlow {}: exploding gradients (inputs x100, weights in [10, 20], "
        "plain SGD, lr={}),".format(safegrad.__version__, TF_VERSION_STRING, learning_rate)
    )
    write(
        "a tf.compat.v1.Session loop; step {} feeds a batch with one NaN feature.".format(poison_step)
    )
    write()
    header = "{:>5} | {:>10} {:>10} | {:>10} {:>11} {:>8} {:>8}".format(
        "step", "loss", "grad norm", "loss", "global norm", "clipped?", "skipped?"
    )
    title = "safegrad.clip_and_apply(clip_norm={}, skip)".format(clip_norm)
    write("{:>5} | {:^21} | {:^41}".format("", "plain SGD (minimize)", title))
    write(header)
    write("-" * len(header))
    for step in _shown_steps(steps, poison_step, every):
        p, s = plain[step], safe[step]
        write(
            "{:>5} | {:>10.3g} {:>10.3g} | {:>10.3g} {:>11.3g} {:>8} {:>8}".format(
                step, p["loss"], p["norm"], s["loss"], s["norm"], _yes(s["clipped"]), _yes(s["skipped"])
            )
        )
    write()

    first_nan = next((r["step"] for r in plain if not math.isfinite(r["loss"])), None)
    plain_stuck = first_nan is not None and not math.isfinite(plain[-1]["loss"])
    applied = [r for r in safe if not r["skipped"]]
    skipped = [r["step"] for r in safe if r["skipped"]]
    safe_finite = all(math.isfinite(r["loss"]) for r in applied)
    improved = applied[-1]["loss"] < applied[0]["loss"] / 1e3
    write(
        "plain SGD: loss is {} from step {} on.".format("NaN/Inf", first_nan)
        if plain_stuck
        else "plain SGD: loss stayed finite (unexpected)."
    )
    write(
        "safegrad:  every applied step finite; loss {:.3g} -> {:.3g}; {} of {} steps clipped; "
        "skipped steps: {}.".format(
            applied[0]["loss"], applied[-1]["loss"], sum(r["clipped"] for r in safe), steps, skipped or "none"
        )
    )
    write()
    write("Why did it go NaN? (safegrad.explain_session, replaying the step)")
    write("plain SGD, step {}:".format(first_nan))
    write(_indented(plain_report))
    if skipped:
        write("safegrad, skipped step {}:".format(skipped[0]))
        write(_indented(safe_report))
    explained = plain_report is not None and (
        not skipped or (safe_report is not None and safe_report.op_type == "Placeholder")
    )
    ok = (
        plain_stuck and safe_finite and improved and explained
        and skipped == ([poison_step] if 0 <= poison_step < steps else [])
    )
    write()
    write("result: {}".format("OK" if ok else "UNEXPECTED (see above)"))
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m safegrad.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    parser.add_argument("--learning-rate", type=float, default=1.0, help="SGD learning rate (default 1.0)")
    parser.add_argument("--clip-norm", type=float, default=1.0, help="safegrad global clip norm (default 1.0)")
    parser.add_argument("--poison-step", type=int, default=40, help="step fed a NaN record; -1: none (default 40)")
    parser.add_argument("--every", type=int, default=10, help="print every N-th step (default 10)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2. Received: --steps={}".format(args.steps))
    if args.every < 1:
        parser.error("--every must be >= 1. Received: --every={}".format(args.every))
    ok = run(args.steps, args.learning_rate, args.clip_norm, args.poison_step, args.every)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
