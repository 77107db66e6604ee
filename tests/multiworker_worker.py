"""One worker of a two-process MultiWorkerMirroredStrategy run (started by test_multiworker.py).

TF_CONFIG (set by the test) names the cluster on loopback. Each worker trains on its half of the
global batch with safegrad.clip_and_apply(on_nonfinite="skip"); at step 1 the second worker's half
holds a NaN. The worker prints its final weights and counters as JSON.
"""

import json
import sys

import numpy as np
import tensorflow as tf

import safegrad

GLOBAL_BATCH = 8
RNG = np.random.RandomState(0)
X = RNG.randn(GLOBAL_BATCH, 3).astype(np.float32)
Y = (X @ np.array([[2.0], [-1.0], [0.5]], np.float32) + 3.0).astype(np.float32)
STEPS = 3
POISON_STEP = 1


def data(step, task, workers):
    y = Y.copy()
    if step == POISON_STEP:
        y[5] = np.nan  # sample 5 is in the second worker's half
    half = GLOBAL_BATCH // workers
    return X[task * half:(task + 1) * half], y[task * half:(task + 1) * half]


def main(family, task):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        w = tf.Variable(np.zeros([3, 1], np.float32), name="w")
        optimizer = tf.compat.v1.train.AdamOptimizer(0.1) if family == "v1" else tf.keras.optimizers.Adam(0.1)

    def step(x, y):
        loss = lambda: tf.reduce_sum(tf.square(tf.matmul(x, w) - y)) / GLOBAL_BATCH  # noqa: E731
        return safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=1.0, on_nonfinite="skip")

    run = tf.function(lambda x, y: strategy.run(step, args=(x, y)))
    for s in range(STEPS):
        x, y = data(s, task, strategy.num_replicas_in_sync)
        run(tf.constant(x), tf.constant(y))
    state = safegrad.step_state(optimizer)
    print(json.dumps({
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "w": w.numpy().ravel().tolist(),
        "total_skips": int(state.total_skips.numpy()),
        "consecutive_skips": int(state.consecutive_skips.numpy()),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
