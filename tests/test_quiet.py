"""safegrad's own calls print no deprecation warning, on every env (TF 1.15 printed three)."""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_no_warning_from_safegrads_own_calls():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "quiet_script.py")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("done"), result.stderr[-5000:]
    after = result.stderr.split("=== safegrad ===", 1)[1]
    noisy = [
        line for line in after.splitlines()
        if re.search(r"deprecat|python warning:", line, re.IGNORECASE)
    ]
    assert noisy == [], after[-5000:]
