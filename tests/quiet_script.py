"""Builds and runs safegrad steps in every mode after the same plain steps; run by test_quiet.py.

TF logs each deprecation warning once per process, so every warning printed after the marker line
comes from code that only the safegrad part runs. Python warnings raised from safegrad's own
files are printed after the marker too.
"""

import sys
import warnings

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
TF2 = tf.__version__.startswith("2.")
MARKER = "=== safegrad ==="


def graph_steps(use_safegrad):
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 2])
        w = tf1.Variable([[1.0], [2.0]], name="w")
        table = tf1.Variable(np.ones([5, 2], np.float32), name="table")
        loss = tf.reduce_sum(tf.matmul(x, w)) + tf.reduce_sum(tf.nn.embedding_lookup(table, [0, 0, 1]))
        step = tf1.train.get_or_create_global_step()
        ops = [tf1.train.AdamOptimizer(0.1).minimize(loss, global_step=step),
               tf1.train.GradientDescentOptimizer(0.1).minimize(loss)]
        if use_safegrad:
            for policy in ("raise", "skip", "ignore"):
                ops.append(safegrad.clip_and_apply(
                    tf1.train.AdamOptimizer(0.1), loss, clip_norm=1.0, per_variable_clip_norm=2.0,
                    clip_value=3.0, on_nonfinite=policy))
                ops.append(safegrad.clip_and_apply(
                    tf1.train.GradientDescentOptimizer(0.1), loss, clip_norm=1.0, on_nonfinite=policy))
            ops.append(safegrad.SafeOptimizer(tf1.train.MomentumOptimizer(0.1, 0.9), clip_norm=1.0,
                                              on_nonfinite="skip").minimize(loss, global_step=step))
            grads = tf1.train.AdamOptimizer(0.1).compute_gradients(loss)
            clipped, _ = safegrad.clip_by_global_norm(grads, 1.0)
            with tf.control_dependencies([safegrad.assert_finite(clipped)]):
                ops.append(safegrad.global_norm(safegrad.clip_per_variable(grads, clip_value=1.0)))
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(ops, {x: np.ones([3, 2], np.float32)})
            if use_safegrad:  # a non-finite step: the diagnosis branch runs
                skip_ops = ops[4:6]  # clip_and_apply(..., on_nonfinite="skip"), Adam and SGD
                sess.run(skip_ops, {x: np.full([3, 2], np.nan, np.float32)})


def function_and_eager_steps(use_safegrad):
    w = tf.Variable([[1.0], [2.0]])  # (NaN after the plain run's poisoned step: safegrad then skips)
    for optimizer in (tf1.train.AdamOptimizer(0.1), tf.keras.optimizers.Adam(0.1)):
        def step(x, optimizer=optimizer):
            loss = lambda: tf.reduce_sum(tf.matmul(x, w))  # noqa: E731
            if use_safegrad:
                return safegrad.clip_and_apply(optimizer, loss, [w], clip_norm=1.0, on_nonfinite="skip")
            with tf.GradientTape() as tape:
                value = loss()
            optimizer.apply_gradients(list(zip(tape.gradient(value, [w]), [w])))
            return None
        for x in (np.ones([3, 2], np.float32), np.full([3, 2], np.nan, np.float32)):
            step(x)
            tf.function(step)(x)
    model = tf.keras.Sequential([tf.keras.Input(shape=(2,)), tf.keras.layers.Dense(1)])
    inner = tf.keras.optimizers.Adam(0.1)
    model.compile(optimizer=safegrad.SafeOptimizer(inner, clip_norm=1.0) if use_safegrad else inner, loss="mse")
    model.fit(np.ones([8, 2], np.float32), np.ones([8, 1], np.float32), epochs=1, verbose=0)


def run(use_safegrad):
    graph_steps(use_safegrad)
    if TF2:
        function_and_eager_steps(use_safegrad)


if __name__ == "__main__":
    run(False)
    import safegrad  # noqa: E402

    sys.stdout.flush()
    print(MARKER, file=sys.stderr, flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(True)
    for warning in caught:
        if "safegrad" in warning.filename:
            print("python warning: {}:{}: {}".format(warning.filename, warning.lineno, warning.message),
                  file=sys.stderr)
    print("done", flush=True)
