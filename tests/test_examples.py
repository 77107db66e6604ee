"""examples/ptb_like_lm.py: a legacy-style LSTM language model, without and with safegrad.

Run in a fresh process on every env (TF1 code; TF 2.x under ``disable_v2_behavior``); its
printed claims are checked against its own numbers.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "ptb_like_lm.py"), "--json"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_safegrad_has_the_ptb_codes_losses_until_clipping_is_active(report):
    plain, safe = report["runs"]["plain"], report["runs"]["safegrad"]
    clipped = [step for step, norm in enumerate(plain["norms"]) if norm > 1.9]
    assert clipped and clipped[0] < len(plain["costs"]) - 1, plain["norms"]
    first = clipped[0]
    assert safe["costs"][: first + 1] == plain["costs"][: first + 1]  # bit for bit
    assert safe["costs"][first + 1] != plain["costs"][first + 1]  # the repeated ids' norm
    np.testing.assert_allclose(safe["costs"], plain["costs"], rtol=1e-4)


def test_tf_compatible_norm_has_the_ptb_codes_losses_everywhere(report):
    assert report["runs"]["safegrad_tf_norm"]["costs"] == report["runs"]["plain"]["costs"]
    assert report["runs"]["safegrad_tf_norm"]["skipped"] == []


def test_a_nan_batch_breaks_the_ptb_code_for_good_and_safegrad_trains_on(report):
    poison = report["poison_step"]
    plain, safe = report["runs"]["plain_poisoned"], report["runs"]["safegrad_poisoned"]
    assert all(np.isnan(plain["costs"][poison:])) and not plain["weights_finite"]
    assert safe["skipped"] == [poison] and safe["weights_finite"]
    assert np.all(np.isfinite(safe["costs"][poison + 1:]))
    assert safe["costs"][-1] < safe["costs"][0]


def test_without_resetting_the_carried_state_every_batch_is_skipped_until_the_limit(report):
    poison = report["poison_step"]
    run = report["runs"]["safegrad_poisoned_no_reset"]
    assert run["skipped"] == list(range(poison, poison + 10))
    assert run["raised"]["step"] == poison + 10
    assert "11 non-finite steps in a row, more than max_consecutive_skips=10" in run["raised"]["message"]
    assert run["weights_finite"]
