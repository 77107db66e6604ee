"""Horovod composition (env py311-tf215-horovod: Horovod 0.28.1 built from source with Gloo).

Two local ranks via `horovodrun --gloo`, bounded in time. Golden rule: both ranks end with the
weights of one process trained on the global batch (computed here), the NaN in rank 1's half
skipped by both. Skipped where Horovod is not installed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from two_process_case import one_device

hvd = pytest.importorskip("horovod.tensorflow", reason="Horovod is built only in the py311-tf215-horovod env")

HERE = os.path.dirname(os.path.abspath(__file__))


def run_ranks(kind):
    launcher = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [launcher, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
         os.path.join(HERE, "horovod_worker.py"), kind],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    ranks = [json.loads(line.split("SAFEGRAD ", 1)[1]) for line in result.stdout.splitlines() if "SAFEGRAD " in line]
    return sorted(ranks, key=lambda r: r["rank"])


@pytest.mark.parametrize("kind", ["v1", "tape"])
def test_safegrad_outside_horovod_sees_averaged_gradients(kind):
    ranks = run_ranks(kind)
    golden = one_device(kind)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["size"] == 2 for r in ranks)
    for r in ranks:
        np.testing.assert_allclose(r["w"], golden, rtol=1e-5, atol=1e-6)
        assert r["total_skips"] == 1
    assert ranks[0]["w"] == ranks[1]["w"]
