"""tf.estimator (TF 1.15 to 2.15): clip_and_apply inside a model_fn.

The counters are in the Estimator's checkpoints and continue across ``train()`` calls; skip and
raise behave as in a Session loop; a model_dir written before safegrad was added resumes with
``safegrad.Saver`` in the spec's Scaffold.

Estimator always adds a ``NanTensorHook`` that stops training when the spec's LOSS is NaN, even
though safegrad skipped that step. To keep training through batches whose loss is NaN, the spec
reports the loss of applied steps only (``docs/migrating.md``, "Estimator").
"""

import numpy as np
import pytest

import safegrad
from safegrad._tf import tf, tf1

from helpers import named_in

estimator = getattr(tf1, "estimator", None)
pytestmark = pytest.mark.skipif(
    estimator is None or not hasattr(estimator, "Estimator"), reason="tf.estimator: TF 1.15 to 2.15"
)

X = np.random.RandomState(0).randn(12, 2).astype(np.float32)
Y = (X @ np.array([[2.0], [-1.0]], np.float32)).astype(np.float32)


def input_fn(poison_batches=()):
    y = Y.copy()
    for batch in poison_batches:
        y[batch * 4] = np.nan

    def make():
        return tf1.data.Dataset.from_tensor_slices((X, y)).batch(4)  # 3 batches, one epoch

    return make


def model_fn(features, labels, mode, params):
    w = tf1.get_variable("w", initializer=np.zeros([2, 1], np.float32))
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    optimizer = tf1.train.AdamOptimizer(0.1)
    if params.get("safegrad", True):
        train_op = safegrad.clip_and_apply(
            optimizer, loss, clip_norm=1.0, on_nonfinite=params.get("policy", "skip"),
            global_step=tf1.train.get_global_step(),
        )
        if params.get("report_applied_loss", True):
            applied = safegrad.step_outputs(train_op).applied
            loss = tf.where(applied, loss, tf.zeros_like(loss))  # a skipped step reports 0
    else:
        train_op = optimizer.minimize(loss, global_step=tf1.train.get_global_step())
    scaffold = tf1.train.Scaffold(saver=safegrad.Saver()) if params.get("saver") else None
    return estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, scaffold=scaffold)


def make_estimator(model_dir, **params):
    config = estimator.RunConfig(log_step_count_steps=None, save_summary_steps=None)
    return estimator.Estimator(model_fn, model_dir=model_dir, params=params, config=config)


def test_skip_counts_in_checkpoints_and_resumes_across_train_calls(tmp_path):
    est = make_estimator(str(tmp_path))
    est.train(input_fn(poison_batches=(1,)))
    assert est.get_variable_value("global_step") == 2  # 3 batches, 1 skipped
    assert est.get_variable_value("safegrad_state/Adam/total_skips") == 1
    assert est.get_variable_value("safegrad_state/Adam/steps") == 3
    w = est.get_variable_value("w")
    assert np.all(np.isfinite(w)) and np.any(w != 0)

    est.train(input_fn(poison_batches=(0,)))  # a new train() call: restored from model_dir
    assert est.get_variable_value("global_step") == 4
    assert est.get_variable_value("safegrad_state/Adam/total_skips") == 2
    assert est.get_variable_value("safegrad_state/Adam/steps") == 6
    assert est.get_variable_value("safegrad_state/Adam/consecutive_skips") == 0


def test_without_the_reported_loss_estimators_nan_hook_stops_after_the_skip(tmp_path):
    est = make_estimator(str(tmp_path), report_applied_loss=False)
    with pytest.raises(tf1.train.NanLossDuringTrainingError):
        est.train(input_fn(poison_batches=(1,)))


def test_raise_stops_training_naming_the_variable(tmp_path):
    est = make_estimator(str(tmp_path), policy="raise")
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        est.train(input_fn(poison_batches=(1,)))
    assert named_in(info.value) == ["w (NaN)"]


def test_a_model_dir_written_before_safegrad_resumes_with_safegrad_saver(tmp_path):
    model_dir = str(tmp_path)
    make_estimator(model_dir, safegrad=False).train(input_fn())
    w_before = make_estimator(model_dir, safegrad=False).get_variable_value("w")

    with pytest.raises(tf.errors.NotFoundError, match="safegrad_state/Adam"):
        make_estimator(model_dir).train(input_fn())  # a plain Saver cannot restore it

    est = make_estimator(model_dir, saver=True)
    est.train(input_fn(poison_batches=(0, 1)))
    assert est.get_variable_value("global_step") == 4  # 3 before safegrad, 1 applied now
    assert est.get_variable_value("safegrad_state/Adam/total_skips") == 2  # counted from zero
    assert np.any(est.get_variable_value("w") != w_before)
    est.train(input_fn())  # the checkpoint now has the counters: a plain restore
    assert est.get_variable_value("global_step") == 7
    assert est.get_variable_value("safegrad_state/Adam/total_skips") == 2
