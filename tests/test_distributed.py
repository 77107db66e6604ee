"""tf.distribute: aggregate first, one decision for all replicas (MirroredStrategy, 2 logical CPUs).

The scenarios run in a fresh process (tests/distributed_scenarios.py): logical devices must be
configured before TensorFlow initialises, which the pytest process already did. Each golden
comparison is against a single-device run made in that same process.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import KERAS_VERSION, TF2

pytestmark = pytest.mark.skipif(not TF2, reason="tf.distribute MirroredStrategy tests: TF2 envs")

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def scenarios():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed_scenarios.py")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout)


FAMILIES = ["v1-sgd", "v1-adam", "keras-sgd", "keras-adam"]


@pytest.mark.parametrize("clip", ["None", "1.0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_two_replicas_equal_one_device_with_the_global_batch(scenarios, family, clip):
    case = scenarios["invariance"]["{}|{}".format(family, clip)]
    assert case["moved"] > 0.1  # it trained (and, with clip 1.0, the bound was active)
    assert case["diff_w"] < 1e-6 and case["diff_b"] < 1e-6, case
    assert case["replicas_agree"]  # the mirrored copies are bit-identical
    if family.startswith("v1"):
        assert case["global_step"] == [3, 3]  # advanced once per step, not once per replica


@pytest.mark.parametrize("family", FAMILIES)
def test_nan_in_one_replica_is_skipped_by_every_replica(scenarios, family):
    case = scenarios["nan_in_one_replica"][family]
    assert case["diff_w_vs_one_device_without_the_batch"] < 1e-6, case
    assert case["replicas_agree"]
    assert case["total_skips"] == [1, 1] and case["consecutive_skips"] == [0, 0]
    if family.startswith("v1"):
        assert case["global_step"] == [2, 2]


@pytest.mark.parametrize("family", ["v1-sgd", "keras-sgd"])
def test_raise_names_the_variables_on_every_replica(scenarios, family):
    message = scenarios["raise_across_replicas"][family]
    assert "safegrad: non-finite gradient for: w (NaN), b (NaN)" in message, message


@pytest.mark.parametrize("poison", ["False", "True"])
def test_keras_fit_under_strategy_scope_is_replica_count_invariant(scenarios, poison):
    case = scenarios["keras_fit"][poison]
    assert case["moved"] > 0.1 and case["diff"] < 1e-6, case
    expected = 2 if poison == "True" else 0  # one poisoned batch per epoch, two epochs
    assert case["total_skips_two"] == [expected, expected] and case["total_skips_one"] == [expected]


def test_what_plain_keras_global_clipnorm_does(scenarios):
    """Context for the README: Keras 3 clips each replica's gradient before the sum."""
    updates = scenarios["keras_global_clipnorm"]
    assert updates["1"] == pytest.approx([0.6, 0.8])
    if KERAS_VERSION == 3:
        assert updates["2"] == pytest.approx([1.2, 1.6])  # depends on the replica count
    else:
        assert updates["2"] == pytest.approx([0.6, 0.8])
