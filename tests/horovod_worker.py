"""One Horovod rank (started by test_horovod.py through horovodrun --gloo, 2 local processes).

safegrad sits OUTSIDE Horovod's all-reduce, so it checks and clips the averaged gradients:
* "v1":   clip_and_apply(hvd.DistributedOptimizer(tf1 Adam), loss) - safegrad calls the wrapper's
          compute_gradients, which all-reduces;
* "tape": clip_and_apply(keras Adam, loss, tape=hvd.DistributedGradientTape(tape)).
Each rank trains on its half of the global batch; at step 1 rank 1's half holds a NaN.
"""

import json
import sys

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

import safegrad

GLOBAL_BATCH = 8
RNG = np.random.RandomState(0)
X = RNG.randn(GLOBAL_BATCH, 3).astype(np.float32)
Y = (X @ np.array([[2.0], [-1.0], [0.5]], np.float32) + 3.0).astype(np.float32)
STEPS = 3
POISON_STEP = 1


def data(step, rank, size):
    y = Y.copy()
    if step == POISON_STEP:
        y[5] = np.nan  # in rank 1's half
    half = GLOBAL_BATCH // size
    return X[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]


def main(kind):
    hvd.init()
    w = tf.Variable(np.zeros([3, 1], np.float32), name="w")
    if kind == "v1":
        optimizer = hvd.DistributedOptimizer(tf.compat.v1.train.AdamOptimizer(0.1))
    else:
        optimizer = tf.keras.optimizers.Adam(0.1)

    @tf.function
    def step(x, y):
        mean_loss = lambda: tf.reduce_mean(tf.square(tf.matmul(x, w) - y))  # noqa: E731
        if kind == "v1":
            return safegrad.clip_and_apply(optimizer, mean_loss, [w], clip_norm=1.0, on_nonfinite="skip")
        with tf.GradientTape() as tape:
            loss = mean_loss()
        tape = hvd.DistributedGradientTape(tape)
        return safegrad.clip_and_apply(optimizer, loss, [w], tape=tape, clip_norm=1.0, on_nonfinite="skip")

    for s in range(STEPS):
        x, y = data(s, hvd.rank(), hvd.size())
        step(tf.constant(x), tf.constant(y))
    state = safegrad.step_state(optimizer)
    print("SAFEGRAD " + json.dumps({
        "rank": hvd.rank(), "size": hvd.size(), "w": w.numpy().ravel().tolist(),
        "total_skips": int(state.total_skips.numpy()),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
