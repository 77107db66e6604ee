"""tf.distribute scenarios, run in a fresh process by test_distributed.py (not collected by pytest).

The process splits its CPU into two logical devices before TensorFlow starts, then trains the same
model on one device and on two MirroredStrategy replicas (global batch = one device's batch) and
prints one JSON document with what the tests compare. Every golden comparison is computed here, in
the same process, from a single-device run.
"""

import functools
import json
import sys

import numpy as np
import tensorflow as tf

_CPUS = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import safegrad  # noqa: E402
from safegrad._keras_compat import keras_major_version  # noqa: E402

from helpers import new_optimizer  # noqa: E402

tf1 = tf.compat.v1
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
GLOBAL_BATCH = 8
RNG = np.random.RandomState(0)
X = RNG.randn(GLOBAL_BATCH, 3).astype(np.float32)
W_TRUE = np.array([[2.0], [-1.0], [0.5]], np.float32)
Y = (X @ W_TRUE + 3.0).astype(np.float32)  # large errors at the start: the clip is active
W0 = np.zeros([3, 1], np.float32)

OPTIMIZERS = {
    name: functools.partial(new_optimizer, name, 0.1) for name in ("v1-sgd", "v1-adam", "keras-sgd", "keras-adam")
}


def batches(poison_step=None, steps=3):
    out = []
    for step in range(steps):
        y = Y.copy()
        if step == poison_step:
            y[5] = np.nan  # sample 5 is in replica 1's half of the global batch
        out.append((X, y))
    return out


def train(name, replicas, clip_norm, policy="skip", data=None, keep_steps=None):
    """Trains a linear model with clip_and_apply; returns (weights per replica, info)."""
    strategy = STRATEGY if replicas == 2 else tf.distribute.get_strategy()
    with strategy.scope():
        w = tf.Variable(W0, name="w")
        b = tf.Variable([0.0], name="b")
        optimizer = OPTIMIZERS[name]()
        global_step = None
        if name.startswith("v1"):
            global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    def step(x, y):
        # The TF2 convention for every optimizer under tf.distribute: each replica's loss is its
        # share of the GLOBAL batch's mean (tf.nn.compute_average_loss); replicas' gradients sum.
        loss = lambda: tf.reduce_sum(tf.square(tf.matmul(x, w) + b - y)) / GLOBAL_BATCH  # noqa: E731
        return safegrad.clip_and_apply(
            optimizer, loss, [w, b], clip_norm=clip_norm, on_nonfinite=policy, global_step=global_step
        )

    run = tf.function(lambda x, y: strategy.run(step, args=(x, y))) if replicas == 2 else tf.function(step)
    for index, (x, y) in enumerate(data or batches()):
        if keep_steps is not None and index not in keep_steps:
            continue
        if replicas == 2:
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
            for xb, yb in STRATEGY.experimental_distribute_dataset(dataset):
                run(xb, yb)
        else:
            run(tf.constant(x), tf.constant(y))
    state = safegrad.step_state(optimizer)
    local = lambda v: [np.asarray(t).tolist() for t in strategy.experimental_local_results(v)]  # noqa: E731
    info = {
        "w": local(w),
        "b": local(b),
        "total_skips": local(state.total_skips),
        "consecutive_skips": local(state.consecutive_skips),
        "global_step": local(global_step) if global_step is not None else None,
    }
    return info


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def invariance():
    results = {}
    for name in OPTIMIZERS:
        for clip in (None, 1.0):
            one = train(name, 1, clip)
            two = train(name, 2, clip)
            results["{}|{}".format(name, clip)] = {
                "diff_w": max_diff(one["w"][0], two["w"][0]),
                "diff_b": max_diff(one["b"][0], two["b"][0]),
                "replicas_agree": all(max_diff(two["w"][0], w) == 0.0 for w in two["w"]),
                "moved": max_diff(one["w"][0], W0),
                "global_step": two["global_step"],
            }
    return results


def nan_in_one_replica():
    results = {}
    for name in OPTIMIZERS:
        poisoned = train(name, 2, 1.0, data=batches(poison_step=1))
        clean_two_steps = train(name, 1, 1.0, keep_steps=(0, 2))
        results[name] = {
            "diff_w_vs_one_device_without_the_batch": max_diff(poisoned["w"][0], clean_two_steps["w"][0]),
            "replicas_agree": all(max_diff(poisoned["w"][0], w) == 0.0 for w in poisoned["w"]),
            "total_skips": poisoned["total_skips"],
            "consecutive_skips": poisoned["consecutive_skips"],
            "global_step": poisoned["global_step"],
        }
    return results


def raise_across_replicas():
    results = {}
    for name in ("v1-sgd", "keras-sgd"):
        try:
            train(name, 2, 1.0, policy="raise", data=batches(poison_step=0, steps=1))
            results[name] = "no error"
        except tf.errors.InvalidArgumentError as error:
            results[name] = str(error)
    return results


def keras_fit(replicas, poison):
    strategy = STRATEGY if replicas == 2 else tf.distribute.get_strategy()
    y = Y.copy()
    if poison:
        y[5] = np.nan
    x_all = np.concatenate([X, X])
    y_all = np.concatenate([y, Y])  # epoch of two batches: the first poisoned (if asked)
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.Input(shape=(3,)), tf.keras.layers.Dense(1, kernel_initializer="zeros")])
        optimizer = safegrad.SafeOptimizer(tf.keras.optimizers.SGD(0.1), clip_norm=1.0, on_nonfinite="skip")
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(x_all, y_all, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0)
    state = optimizer.step_state
    local = lambda v: [np.asarray(t).tolist() for t in strategy.experimental_local_results(v)]  # noqa: E731
    return {"kernel": local(model.layers[0].kernel), "total_skips": local(state.total_skips)}


def keras_fit_invariance():
    results = {}
    for poison in (False, True):
        one = keras_fit(1, poison)
        two = keras_fit(2, poison)
        results[str(poison)] = {
            "diff": max_diff(one["kernel"][0], two["kernel"][0]),
            "moved": max_diff(one["kernel"][0], np.zeros([3, 1])),
            "total_skips_two": two["total_skips"],
            "total_skips_one": one["total_skips"],
        }
    return results


def keras_global_clipnorm_depends_on_replicas():
    """What plain Keras does with global_clipnorm, for contrast (the #6 motivation)."""
    out = {}
    for replicas in (1, 2):
        strategy = STRATEGY if replicas == 2 else tf.distribute.get_strategy()
        with strategy.scope():
            w = tf.Variable([0.0, 0.0])
            optimizer = tf.keras.optimizers.SGD(1.0, global_clipnorm=1.0)

        def step(optimizer=optimizer, w=w):
            ctx = tf.distribute.get_replica_context()
            n = ctx.num_replicas_in_sync if ctx is not None else 1
            grads = [tf.constant([3.0, 4.0]) / n]  # summed over replicas: [3, 4]
            optimizer.apply_gradients(zip(grads, [w]))

        if replicas == 2:
            tf.function(lambda: STRATEGY.run(step))()
        else:
            tf.function(step)()
        out[replicas] = (-w.numpy()).tolist()
    return out


def main():
    results = {
        "tensorflow": tf.__version__,
        "keras_major": keras_major_version(),
        "invariance": invariance(),
        "nan_in_one_replica": nan_in_one_replica(),
        "raise_across_replicas": raise_across_replicas(),
        "keras_fit": keras_fit_invariance(),
        "keras_global_clipnorm": keras_global_clipnorm_depends_on_replicas(),
    }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
