"""Each tox env really has the Python, TensorFlow and Keras its name promises.

tox passes SAFEGRAD_EXPECT_TF / SAFEGRAD_EXPECT_KERAS (tox.ini) and TOX_ENV_NAME; outside tox
these tests skip.
"""

import os
import re
import sys

import pytest

from safegrad._tf import TF_VERSION_STRING, tf

from helpers import KERAS_VERSION, TF2

ENV_NAME = os.environ.get("TOX_ENV_NAME", "")
EXPECT_TF = os.environ.get("SAFEGRAD_EXPECT_TF")
EXPECT_KERAS = os.environ.get("SAFEGRAD_EXPECT_KERAS")


@pytest.mark.skipif(not re.match(r"py\d+-", ENV_NAME), reason="not running in a tox env")
def test_python_matches_env_name():
    digits = re.match(r"py(\d)(\d+)-", ENV_NAME).groups()
    assert sys.version_info[:2] == (int(digits[0]), int(digits[1]))


@pytest.mark.skipif(EXPECT_TF is None, reason="not running in a tox env")
def test_tensorflow_matches_env_name():
    assert TF_VERSION_STRING.startswith(EXPECT_TF + "."), (TF_VERSION_STRING, EXPECT_TF)


@pytest.mark.skipif(EXPECT_KERAS is None, reason="not running in a tox env")
def test_keras_matches_env_name():
    assert KERAS_VERSION == int(EXPECT_KERAS)
    if "tfkeras" in ENV_NAME:
        assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
        assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
    elif TF2 and EXPECT_KERAS == "3":
        import keras

        assert keras.__version__.startswith("3."), keras.__version__
        assert tf.keras.optimizers.SGD.__module__.startswith("keras"), tf.keras.optimizers.SGD.__module__


@pytest.mark.skipif("horovod" not in ENV_NAME, reason="only the Horovod env promises Horovod")
def test_horovod_env_has_horovod_with_gloo():
    import horovod.tensorflow as hvd

    assert hvd.gloo_built() and not hvd.mpi_built()
