"""docs/migrating.md: every before/after pattern runs as written, and does what the guide says.

Each snippet runs in a fresh process (TF1 code: TF 1.15 as is, TF 2.x under
``disable_v2_behavior``), after the guide's setup, on four batches of which the third holds a NaN
feature (or on clean batches, for the exact-reproduction claim).
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = open(os.path.join(ROOT, "docs", "migrating.md"), encoding="utf-8").read()

HARNESS = '''
import json, os
rng = np.random.RandomState(0)
feeds = []
for index in range(4):
    xb = rng.randn(6, 3).astype(np.float32)
    if index == 2 and not os.environ.get("CLEAN"):
        xb[1, 0] = np.nan
    feeds.append({x: xb, ids: np.array([1, 1, 2, 5, 5, 5], np.int32), y: rng.randn(6, 1).astype(np.float32)})
result = {"error": None, "fetched": []}
with tf.Session() as sess:
    sess.run(tf.global_variables_initializer())
    try:
        if "accumulate" in globals():
            for index, feed in enumerate(feeds):
                sess.run(accumulate, feed)
                if index % k == k - 1:
                    sess.run(reset)
        else:
            for feed in feeds:
                out = sess.run([train_op] + list(globals().get("extra_fetches", [])), feed)
                result["fetched"].append([float(v) for v in out[1:] if v is not None and np.ndim(v) == 0])
    except tf.errors.InvalidArgumentError as error:
        result["error"] = error.message
    values = sess.run([w, embedding])
    result["w"] = values[0].ravel().tolist()
    result["bytes"] = [v.tobytes().hex() for v in values]
    result["finite"] = bool(all(np.all(np.isfinite(v)) for v in values))
    result["global_step"] = int(sess.run(global_step))
    try:
        result["total_skips"] = int(sess.run(safegrad.find_step_state().total_skips))
    except ValueError:
        result["total_skips"] = None
print("RESULT " + json.dumps(result))
'''


def block(marker):
    match = re.search(r"<!-- migrate:%s -->\s*```python\n(.*?)```" % re.escape(marker), GUIDE, re.S)
    assert match, "docs/migrating.md has no block after <!-- migrate:{} -->".format(marker)
    return match.group(1)


def run(name, clean=False):
    code = block("setup") + block(name) + HARNESS
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if clean:
        env["CLEAN"] = "1"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_every_block_of_the_guide_is_run_here():
    markers = set(re.findall(r"<!-- migrate:(\w+?)(?::(\w+))? -->", GUIDE))
    names = {"{}:{}".format(*m) if m[1] else m[0] for m in markers}
    assert names == {
        "setup", "global_norm:before", "global_norm:after", "global_norm_exact:after", "nmt:before",
        "nmt:after", "tutorial:before", "tutorial:after", "check_numerics:before", "check_numerics:after",
        "accumulation:before", "accumulation:after",
    }


@pytest.mark.parametrize("pattern", ["global_norm", "nmt", "accumulation"])
def test_before_goes_nan_for_good_after_skips_the_bad_batch(pattern):
    before = run(pattern + ":before")
    assert before["error"] is None and not before["finite"]
    after = run(pattern + ":after")
    assert after["error"] is None and after["finite"]
    assert after["total_skips"] == 1
    assert after["global_step"] == (1 if pattern == "accumulation" else 3)


def test_this_steps_norm_is_printed_as_before():
    before, after = run("nmt:before"), run("nmt:after")
    norms = [f[0] for f in after["fetched"]]
    assert np.isnan(norms[2]) and np.isfinite(norms[3])  # each run shows its own step's norm
    # The embedding's repeated ids count as the dense gradient (guide, section 1): close to, not
    # equal to, tf.clip_by_global_norm's.
    np.testing.assert_allclose(norms[:2], [f[0] for f in before["fetched"][:2]], rtol=1e-2)
    assert norms[0] != before["fetched"][0][0]


def test_tf_compatible_norm_reproduces_the_old_run_bit_for_bit():
    before = run("global_norm:before", clean=True)
    exact = run("global_norm_exact:after", clean=True)
    assert exact["bytes"] == before["bytes"]
    default = run("global_norm:after", clean=True)
    np.testing.assert_allclose(default["w"], before["w"], rtol=1e-6)


def test_the_tutorial_assertion_is_inverted_and_safegrad_names_the_variable():
    before = run("tutorial:before")
    assert "NaN gradient detected" in before["error"] and before["global_step"] == 0  # fails on a healthy step
    after = run("tutorial:after")
    assert "safegrad: non-finite gradient for:" in after["error"] and "model/w (NaN)" in after["error"]
    assert after["global_step"] == 2 and after["finite"]


def test_check_numerics_names_a_tensor_safegrad_the_variables():
    before = run("check_numerics:before")
    assert "Tensor had NaN values" in before["error"] and "non-finite gradient for" not in before["error"]
    after = run("check_numerics:after")
    assert "model/w (NaN)" in after["error"] and after["finite"] and after["global_step"] == 2
