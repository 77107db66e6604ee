"""One Horovod rank (started by test_horovod.py through horovodrun --gloo, 2 local processes).

safegrad sits OUTSIDE Horovod's all-reduce, so it checks and clips the averaged gradients:
* "v1":   clip_and_apply(hvd.DistributedOptimizer(tf1 Adam), loss) - safegrad calls the wrapper's
          compute_gradients, which all-reduces;
* "tape": clip_and_apply(keras Adam, loss, tape=hvd.DistributedGradientTape(tape)).
Each rank trains on its half of the global batch; at step 1 rank 1's half holds a NaN (tests/two_process_case.py).
"""

import json
import sys

import tensorflow as tf
import horovod.tensorflow as hvd

import safegrad
from two_process_case import CLIP_NORM, STEPS, data, make_optimizer


def main(kind):
    hvd.init()
    w = tf.Variable(tf.zeros([3, 1]), name="w")
    optimizer = make_optimizer(kind)
    if kind == "v1":
        optimizer = hvd.DistributedOptimizer(optimizer)

    @tf.function
    def step(x, y):
        mean_loss = lambda: tf.reduce_mean(tf.square(tf.matmul(x, w) - y))  # noqa: E731
        if kind == "v1":
            return safegrad.clip_and_apply(optimizer, mean_loss, [w], clip_norm=CLIP_NORM, on_nonfinite="skip")
        with tf.GradientTape() as tape:
            loss = mean_loss()
        tape = hvd.DistributedGradientTape(tape)
        return safegrad.clip_and_apply(optimizer, loss, [w], tape=tape, clip_norm=CLIP_NORM, on_nonfinite="skip")

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
