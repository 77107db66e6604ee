"""One worker of a two-process MultiWorkerMirroredStrategy run (started by test_multiworker.py).

TF_CONFIG (set by the test) names the cluster on loopback. Each worker trains on its half of the
global batch with safegrad.clip_and_apply(on_nonfinite="skip"); at step 1 the second worker's half
holds a NaN (tests/two_process_case.py). The worker prints its final weights and counters as JSON.
"""

import json
import sys

import tensorflow as tf

import safegrad
from two_process_case import CLIP_NORM, GLOBAL_BATCH, STEPS, data, make_optimizer


def main(family, task):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        w = tf.Variable(tf.zeros([3, 1]), name="w")
        optimizer = make_optimizer(family)

    def step(x, y):
        loss = lambda: tf.reduce_sum(tf.square(tf.matmul(x, w) - y)) / GLOBAL_BATCH  # noqa: E731
        return safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=CLIP_NORM, on_nonfinite="skip")

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
