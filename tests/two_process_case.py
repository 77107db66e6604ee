"""The training case shared by the two-process tests (MultiWorkerMirroredStrategy and Horovod).

Both workers/ranks train `w` (3x1, zeros) with Adam(0.1), clip_norm=1.0, on_nonfinite="skip", on
their half of a global batch of 8; at POISON_STEP the second half holds a NaN. `one_device` is the
golden run: one process, the whole global batch, the poisoned step left out.
"""

import numpy as np

import safegrad
from safegrad._tf import tf

from helpers import new_optimizer

GLOBAL_BATCH = 8
_RNG = np.random.RandomState(0)
X = _RNG.randn(GLOBAL_BATCH, 3).astype(np.float32)
Y = (X @ np.array([[2.0], [-1.0], [0.5]], np.float32) + 3.0).astype(np.float32)
STEPS = 3
POISON_STEP = 1
CLIP_NORM = 1.0


def data(step, index, count):
    """The `index`-th of `count` equal shards of the global batch at `step` (NaN in sample 5 at POISON_STEP)."""
    y = Y.copy()
    if step == POISON_STEP:
        y[5] = np.nan  # sample 5 lies in the second half
    shard = GLOBAL_BATCH // count
    return X[index * shard:(index + 1) * shard], y[index * shard:(index + 1) * shard]


def make_optimizer(family):
    """Adam(0.1): tf.compat.v1.train for family "v1", Keras otherwise."""
    return new_optimizer("v1-adam" if family == "v1" else "keras-adam", 0.1)


def one_device(family):
    """Weights after STEPS steps on one device with the global batch, the poisoned step left out."""
    w = tf.Variable(np.zeros([3, 1], np.float32))
    optimizer = make_optimizer(family)
    for step in range(STEPS):
        if step == POISON_STEP:
            continue
        x, y = data(step, 0, 1)
        loss = lambda x=x, y=y: tf.reduce_sum(tf.square(tf.matmul(x, w) - y)) / GLOBAL_BATCH  # noqa: E731
        safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=CLIP_NORM, on_nonfinite="skip")
    return w.numpy().ravel()
