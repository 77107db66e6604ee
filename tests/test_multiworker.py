"""MultiWorkerMirroredStrategy across two worker PROCESSES on loopback.

Both workers are started by the test with a TF_CONFIG on free ports, and are always killed at the
end (bounded time). Golden rule: both workers end with the weights of one device trained on the
global batch (computed here), and the NaN in the second worker's shard is skipped by both.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from safegrad._tf import TF_VERSION
from two_process_case import one_device

pytestmark = pytest.mark.skipif(TF_VERSION < (2, 0), reason="multi-worker tests: TF2 envs")

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 240


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(family):
    ports = free_ports(2)
    cluster = {"worker": ["127.0.0.1:{}".format(p) for p in ports]}
    processes = []
    try:
        for task in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": task}}))
            processes.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "multiworker_worker.py"), family, str(task)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
            ))
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err[-4000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("family", ["v1", "keras"])
def test_two_workers_match_one_device_and_skip_together(family):
    outputs = run_workers(family)
    golden = one_device(family)
    assert [o["replicas"] for o in outputs] == [2, 2]
    for o in outputs:
        np.testing.assert_allclose(o["w"], golden, rtol=1e-5, atol=1e-6)
        assert (o["total_skips"], o["consecutive_skips"]) == (1, 0)
    assert outputs[0]["w"] == outputs[1]["w"]  # the workers' copies never diverge
