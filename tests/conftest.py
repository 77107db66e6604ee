"""Fixtures (and only fixtures): the execution modes every behaviour is tested in.

``mode`` runs a test body in a graph + ``tf.compat.v1.Session`` (every env) and in ``tf.function``
and eagerly (TF2 envs); ``tf2_mode`` only the TF2 modes; ``graph_mode`` only the graph. See
``helpers.Mode``. ``gpu_host``: safegrad's graphs built as on a host with a GPU.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import KERAS_VERSION, MODES, Mode  # noqa: E402  (after the log level)


@pytest.fixture(params=MODES)
def mode(request):
    with Mode(request.param) as m:
        yield m


@pytest.fixture(params=[m for m in MODES if m != "graph"])
def tf2_mode(request):
    """Only the TF2 modes (function, eager): for Keras 3 optimizers and other TF2-only APIs."""
    with Mode(request.param) as m:
        yield m


@pytest.fixture
def graph_mode():
    with Mode("graph") as m:
        yield m


@pytest.fixture
def gpu_host(monkeypatch):
    """safegrad builds its graphs as it does where a GPU is visible (no ``If`` kept as a function
    call; see ``_compat.if_call_is_safe``), while they run here, on the CPU."""
    from safegrad import _compat

    monkeypatch.setattr(_compat, "if_call_is_safe", lambda: False)


def pytest_report_header(config):
    import tensorflow

    return "safegrad test env: TensorFlow {}, Keras {}, modes {}".format(
        tensorflow.__version__, KERAS_VERSION, ", ".join(MODES)
    )
