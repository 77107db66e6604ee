"""A legacy-style (TF1, PTB-like) LSTM language model, trained without and with safegrad.

Written the way the PTB language model of the TensorFlow models repository is: a
``tf.compat.v1`` graph, an embedding, an LSTM unrolled over ``num_steps`` whose state is carried
from batch to batch, ``tf.clip_by_global_norm(tf.gradients(cost, tvars), max_grad_norm)`` and
gradient descent with learning rate 1.0. The data are synthetic (a small Markov chain over 50
words, plus one float feature per word), so it runs in seconds, anywhere (the LSTM is written
out, so no RNN cell library is needed).

    python examples/ptb_like_lm.py [--steps 40] [--poison-step 15] [--json]

It trains five runs from the same initial weights on the same batches and prints their losses:

* ``plain``: the PTB code;
* ``safegrad``: ``safegrad.clip_and_apply(..., clip_norm=max_grad_norm, on_nonfinite="skip")``;
* ``safegrad_tf_norm``: the same with ``tf_compatible_norm=True``;
* ``plain_poisoned`` / ``safegrad_poisoned``: one batch has a NaN feature. The PTB code's loss is
  NaN from then on; safegrad skips the step, resets the carried state (the state out of the NaN
  batch is NaN) and trains on;
* ``safegrad_poisoned_no_reset``: the same without the reset: the NaN state is carried into
  every following batch, each is skipped, and ``max_consecutive_skips=10`` stops the run.

What to expect (``tests/test_examples.py`` checks it): ``safegrad`` has exactly the losses of
``plain`` while clipping is inactive, and differs slightly once it is (the embedding's repeated
ids count as the dense gradient); ``safegrad_tf_norm`` has exactly the losses of ``plain`` at
every step.
"""

import argparse
import json
import sys

import numpy as np
import tensorflow.compat.v1 as tf

import safegrad

VOCAB, HIDDEN, BATCH, NUM_STEPS, MAX_GRAD_NORM, LEARNING_RATE = 50, 16, 8, 10, 1.9, 1.0


def corpus(length=20000, seed=0):
    """Word ids from a sparse Markov chain, and one float feature per word."""
    rng = np.random.RandomState(seed)
    successors = rng.randint(0, VOCAB, size=(VOCAB, 3))
    words = [0]
    for _ in range(length - 1):
        words.append(successors[words[-1], rng.randint(3)])
    words = np.array(words, np.int32)
    features = (np.sin(np.arange(length) / 7.0) * 0.5).astype(np.float32)
    return words, features


def batches(steps, poison_step=None):
    """PTB-style batches: the corpus cut into BATCH rows, read NUM_STEPS words at a time."""
    words, features = corpus()
    rows = len(words) // BATCH
    words, features = words[: rows * BATCH].reshape(BATCH, rows), features[: rows * BATCH].reshape(BATCH, rows)
    out = []
    for step in range(steps):
        start = (step * NUM_STEPS) % (rows - NUM_STEPS - 1)
        feature = features[:, start:start + NUM_STEPS].copy()
        if step == poison_step:
            feature[0, 3] = np.nan  # a corrupt record
        out.append((words[:, start:start + NUM_STEPS], feature, words[:, start + 1:start + NUM_STEPS + 1]))
    return out


def initial_weights(seed=1):
    rng = np.random.RandomState(seed)
    uniform = lambda *shape: rng.uniform(-0.1, 0.1, shape).astype(np.float32)  # noqa: E731
    return {
        "embedding": uniform(VOCAB, HIDDEN),
        "lstm_kernel": uniform(HIDDEN + 1 + HIDDEN, 4 * HIDDEN),
        "lstm_bias": np.zeros(4 * HIDDEN, np.float32),
        "softmax_w": uniform(HIDDEN, VOCAB),
        "softmax_b": np.zeros(VOCAB, np.float32),
    }


class PTBLikeModel:
    """The model, as the PTB code builds it: placeholders in, cost and final state out."""

    def __init__(self, weights):
        self.input_ids = tf.placeholder(tf.int32, [BATCH, NUM_STEPS], name="input_ids")
        self.features = tf.placeholder(tf.float32, [BATCH, NUM_STEPS], name="features")
        self.targets = tf.placeholder(tf.int32, [BATCH, NUM_STEPS], name="targets")
        self.initial_state = (tf.placeholder(tf.float32, [BATCH, HIDDEN], name="c"),
                              tf.placeholder(tf.float32, [BATCH, HIDDEN], name="h"))
        with tf.variable_scope("Model"):
            v = {name: tf.get_variable(name, initializer=value) for name, value in weights.items()}
        inputs = tf.nn.embedding_lookup(v["embedding"], self.input_ids)
        c, h = self.initial_state
        outputs = []
        for t in range(NUM_STEPS):  # an LSTM unrolled, as PTB's "simplified static_rnn"
            x = tf.concat([inputs[:, t, :], self.features[:, t:t + 1], h], axis=1)
            i, j, f, o = tf.split(tf.matmul(x, v["lstm_kernel"]) + v["lstm_bias"], 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
            h = tf.sigmoid(o) * tf.tanh(c)
            outputs.append(h)
        logits = tf.matmul(tf.reshape(tf.stack(outputs, axis=1), [-1, HIDDEN]), v["softmax_w"]) + v["softmax_b"]
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.reshape(self.targets, [-1]), logits=logits)
        self.cost = tf.reduce_sum(losses) / BATCH  # PTB: summed over time, averaged over the batch
        self.final_state = (c, h)

    def feed(self, batch, state):
        ids, features, targets = batch
        return {self.input_ids: ids, self.features: features, self.targets: targets,
                self.initial_state[0]: state[0], self.initial_state[1]: state[1]}


def train(kind, steps, poison_step=None, reset_state=True):
    """One run; returns a dict of per-step costs (NaN where the step's cost is NaN) and more."""
    zero_state = (np.zeros([BATCH, HIDDEN], np.float32), np.zeros([BATCH, HIDDEN], np.float32))
    with tf.Graph().as_default():
        model = PTBLikeModel(initial_weights())
        tvars = tf.trainable_variables()
        optimizer = tf.train.GradientDescentOptimizer(LEARNING_RATE)
        global_step = tf.train.get_or_create_global_step()
        if kind == "plain":
            grads, tf_norm = tf.clip_by_global_norm(tf.gradients(model.cost, tvars), MAX_GRAD_NORM)
            train_op = optimizer.apply_gradients(zip(grads, tvars), global_step=global_step)
            applied, norm = tf.constant(True), tf_norm
        else:
            train_op = safegrad.clip_and_apply(
                optimizer, model.cost, tvars, clip_norm=MAX_GRAD_NORM, on_nonfinite="skip",
                max_consecutive_skips=10, global_step=global_step, tf_compatible_norm=(kind == "safegrad_tf_norm"),
            )
            applied, norm = safegrad.step_outputs(train_op).applied, safegrad.step_outputs(train_op).global_norm
        costs, norms, skipped, raised = [], [], [], None
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            state = zero_state
            for step, batch in enumerate(batches(steps, poison_step)):
                try:
                    _, cost, final, applied_now, norm_now = sess.run(
                        [train_op, model.cost, model.final_state, applied, norm], model.feed(batch, state)
                    )
                except tf.errors.InvalidArgumentError as error:  # max_consecutive_skips exceeded
                    lines = [line for line in error.message.splitlines() if "safegrad:" in line]
                    raised = {"step": step, "message": (lines or [error.message])[0].strip()}
                    break
                costs.append(float(cost))
                norms.append(float(norm_now))
                if not applied_now:
                    skipped.append(step)
                # The PTB loop carries the final state on; after a skipped step it would carry a
                # NaN state into every following batch: start from zeros instead.
                state = final if applied_now or not reset_state else zero_state
            finite = all(np.all(np.isfinite(v)) for v in sess.run(tvars))
    return {"costs": costs, "norms": norms, "skipped": skipped, "weights_finite": bool(finite), "raised": raised}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--poison-step", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args(argv)
    if tf.__version__.startswith("2."):
        tf.disable_v2_behavior()  # TF1 code on TF 2.x
    runs = {kind: train(kind, args.steps) for kind in ("plain", "safegrad", "safegrad_tf_norm")}
    runs["plain_poisoned"] = train("plain", args.steps, args.poison_step)
    runs["safegrad_poisoned"] = train("safegrad", args.steps, args.poison_step)
    runs["safegrad_poisoned_no_reset"] = train("safegrad", args.steps, args.poison_step, reset_state=False)
    if args.json:
        print(json.dumps({"tensorflow": tf.__version__, "poison_step": args.poison_step, "runs": runs}))
        return 0
    print("PTB-like LSTM LM, TensorFlow {}: cost per step (clip_norm={})".format(tf.__version__, MAX_GRAD_NORM))
    kinds = ["plain", "safegrad", "safegrad_tf_norm", "plain_poisoned", "safegrad_poisoned"]
    print("step | TF norm | " + " | ".join("{:>17}".format(k) for k in kinds))
    for step in range(args.steps):
        cells = " | ".join("{:>17.6f}".format(runs[k]["costs"][step]) for k in kinds)
        print("{:>4} | {:>7.3f} | {}".format(step, runs["plain"]["norms"][step], cells))
    print("safegrad skipped steps (poisoned run): {}".format(runs["safegrad_poisoned"]["skipped"]))
    no_reset = runs["safegrad_poisoned_no_reset"]
    print("without resetting the carried state: skipped {}, then at step {}: {}".format(
        no_reset["skipped"], no_reset["raised"]["step"], no_reset["raised"]["message"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
