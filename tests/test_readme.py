"""README.md's examples run, and its two commands are the ones .ci/run executes."""

import os
import re
import subprocess
import sys

import pytest

from helpers import TF2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()

DATA = """
import numpy as np
rng = np.random.RandomState(0)
def _batch(poison=False):
    x = (rng.rand(32, 8) * 100).astype(np.float32)
    if poison:
        x[0, 0] = np.nan
    return x, x.sum(axis=1, keepdims=True).astype(np.float32) / 100
batches = [_batch(poison=(i == 2)) for i in range(5)]
dataset = batches
"""


def block_after(marker, language):
    match = re.search(r"<!-- {} -->\s*```{}\n(.*?)```".format(re.escape(marker), language), README, re.S)
    assert match, "README.md has no {} block after <!-- {} -->".format(language, marker)
    return match.group(1)


def _run_python(code):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, text=True, timeout=600)


def test_tf1_example_runs_and_skips_the_poisoned_batch():
    result = _run_python(DATA + block_after("example:tf1", "python"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"skipped steps 1$", result.stdout.strip()), result.stdout


@pytest.mark.skipif(not TF2, reason="TF2 example")
def test_tf2_example_runs_and_skips_the_poisoned_batch():
    result = _run_python(DATA + block_after("example:tf2", "python"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_ci_runs_the_readme_commands():
    commands = [block_after("ci:main-job", "sh").strip(), block_after("ci:tests", "sh").strip()]
    assert all(len(c.splitlines()) == 1 for c in commands), commands
    assert "tox -e demo" in commands[0] and commands[1].endswith("tox -p 2")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    # .ci/run does not copy the commands: it reads them from README.md by these markers.
    assert "ci:main-job" in ci and "ci:tests" in ci


@pytest.mark.skipif(not TF2, reason="Keras example: TF2")
def test_keras_example_runs(tmp_path):
    from helpers import KERAS_VERSION

    extension = ".keras" if KERAS_VERSION == 3 or _new_keras2_optimizer() else ".h5"
    setup = DATA + "x = np.concatenate([b[0] for b in batches]); y = np.concatenate([b[1] for b in batches])\n"
    setup += "logdir = {!r}; path = {!r}\n".format(str(tmp_path / "logs"), str(tmp_path / ("model" + extension)))
    result = _run_python(setup + block_after("example:keras", "python") + "\nprint(type(restored.optimizer).__name__)")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("[1, 1]"), lines  # the poisoned batch comes once per epoch
    assert lines[-1].startswith("SafeOptimizer")


def _new_keras2_optimizer():
    from safegrad._adapters import Keras2OptimizerAdapter, adapter_for
    from safegrad._tf import tf

    return isinstance(adapter_for(tf.keras.optimizers.Adam()), Keras2OptimizerAdapter)


def test_the_install_extras_bring_what_the_examples_need():
    """A fresh `pip install "safegrad[tf]"` runs the Keras example: its TensorBoard callback needs
    the tensorboard package, which TensorFlow 2.21 no longer installs."""
    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    for extra in ("tf", "tf-cpu"):
        match = re.search(r'"{}": \[([^\]]*)\]'.format(re.escape(extra)), setup)
        assert match and '"tensorboard"' in match.group(1), extra
    assert 'pip install "safegrad[tf]"' in README
    assert "TensorBoard(logdir)" in block_after("example:keras", "python")
