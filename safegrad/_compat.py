"""TensorFlow version shims: one function per difference between TF 1.15 and the newest TF.

Each is decided by feature detection where the feature can be tested, and names the TF versions
that need it, so it can be deleted when those versions are dropped. Private TF API is used only
here, each use labelled with the versions it was checked on. Keras differences are in
``_keras_compat``; everything else in safegrad is written once, against public API.
"""

import contextlib
import functools

from safegrad._tf import TF_VERSION, inside_function, tf, tf1


def in_xla_context():
    """True while tracing code XLA will compile (``tf.function(jit_compile=True)``, Keras
    ``jit_compile``, TPU). XLA has no string ops, no ``Unique`` and drops ``Assert``.

    ``control_flow_util.GraphOrParentsInXlaContext`` is the check TF's own ops use; private but
    present, unchanged, from TF 1.15 to 2.21. Without it, assume no XLA.
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf1.get_default_graph()))


def lazy_cond(pred, true_fn, false_fn):
    """``tf.cond`` for a cheap, usual ``true_fn`` and a costly, rare ``false_fn``: the untaken
    costly branch costs nothing at run time.

    A lowered cond (Switch/Merge, what TF 1.x builds and TF 2.x lowers ``If`` ops to) pays, on
    every step, one Switch per captured tensor plus a dead-node visit for every op of the untaken
    branch. The overflow/diagnosis branch of the global norm captures every gradient and has ~20
    ops per gradient: on a 200-variable model that was 6-12% of a step in a Session. So the cond
    is an ``If`` op kept as a function call (``_lower_using_switch_merge=False``): only the taken
    branch runs, for the cost of one call per step.

    In a Session graph even that call is avoided: the If goes into the false branch of a
    ``graph_cond`` whose true branch is ``true_fn`` built inline, so a healthy step runs
    ``true_fn``'s few ops and one Switch, and the If is dead (never called, its functions never
    instantiated); ``graph_cond`` captures nothing, so this costs a constant number of ops to
    build. Not in a ``tf.function``: there the outer cond would be a branch function capturing
    every gradient a second time (TF 2.21, 1,000 variables: the trace 1.28 -> 1.41 x plain
    ``minimize``) for no step time that ``bench_models`` could tell apart. Under XLA (which
    compiles the If either way) the If alone; eagerly a plain ``tf.cond``. Where a GPU (or another
    accelerator) is visible, no If call (``if_call_is_safe``): a lowered ``tf.cond`` in a
    ``tf.function``, a ``graph_cond`` with both branches inline in a Session graph, so that every
    op is placed on a device with its kernel; a step then pays the Switches and dead-node visits
    above (not measured: no GPU where safegrad is developed).

    Private API (``cond_v2``, the lowering attribute), present from TF 1.15 to 2.21; branches
    must not capture ref variables (TF1) - the callers capture only tensors. Both branches return
    the same structure of tensors.
    """
    if tf.executing_eagerly():
        return tf.cond(pred, true_fn, false_fn)
    if in_xla_context():
        return _if_call(pred, true_fn, false_fn)
    if not if_call_is_safe():
        # A GPU (or another accelerator) is visible: every op placed on its own, as TF does.
        return tf.cond(pred, true_fn, false_fn) if inside_function() else graph_cond(pred, true_fn, false_fn)
    if inside_function():
        return _if_call(pred, true_fn, false_fn)
    return graph_cond(pred, true_fn, lambda: _if_call(pred, true_fn, false_fn))


@functools.lru_cache(maxsize=None)
def if_call_is_safe():
    """Whether an ``If`` kept as a function call (``_if_call``) can run any branch of
    ``lazy_cond`` here: only when every device this process sees is a CPU (XLA's own CPU device
    aside).

    TF 1.15-2.21 (read in TF's sources, not run: no GPU where safegrad is developed): the ``If``
    kernel instantiates its branches as single-device functions on the ``If``'s own device, and
    nothing places their ops (``kernels/functional_ops.cc``, ``FunctionLibraryRuntime::
    Instantiate``); an ``If`` placed on a GPU, beside the gradients, would run the diagnosis
    branch's string ops and the healthy branch's string constants on the GPU, which has no
    kernels for them. (TF lowers its own conds so that branch ops get their own devices.) The
    visible PHYSICAL devices are listed: that creates no device and takes no GPU memory, unlike
    listing logical ones (which would, in a TF 1.15 Session program, before the Session's own).
    """
    # (TF 1.15 has it in tf.config.experimental only)
    config = tf.config if hasattr(tf.config, "get_visible_devices") else tf.config.experimental
    try:
        devices = config.get_visible_devices()
    except (AttributeError, RuntimeError, ValueError):  # pragma: no cover
        return False
    return all(d.device_type == "CPU" or d.device_type.startswith("XLA_") for d in devices)


def _if_call(pred, true_fn, false_fn):
    """A ``cond_v2`` ``If`` op kept as a function call (not lowered to Switch/Merge)."""
    from tensorflow.core.framework import attr_value_pb2
    from tensorflow.python.ops import cond_v2

    graph = tf1.get_default_graph()
    before = len(graph.get_operations())
    result = cond_v2.cond_v2(pred, true_fn, false_fn, name="safegrad_cond")
    for op in graph.get_operations()[before:]:
        if op.type in ("If", "StatelessIf"):
            op._set_attr("_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))
    return result


def graph_cond(pred, true_fn, false_fn):
    """A TF1 cond for a Session graph, built for the cost of its branches' own ops.

    ``tf.cond`` wraps every op of a branch in a cond context (TF1 control flow: a Switch per
    outside tensor and per-op bookkeeping) or in a branch function (TF2 control flow: a capture
    per outside tensor, lowered back to Switch/Merge before running). Around an optimizer's
    update of N variables either costs as much to build as the update itself (TF 1.15: 2.0 s vs
    0.6 s for 1,000 variables; TF 2.21: a capture per variable handle, 0.9 ms each). Here each
    branch is built in the graph as it is, every op of it created under a control dependency on
    the branch's pivot (the Identity of one Switch of ``pred``, as TF1's cond has): the untaken
    branch's pivot is dead, so are its ops, and none runs - TF1's cond semantics, for one Switch.
    The branches return the same structure (a tensor, or a dict/list/tuple of tensors); each of
    its tensors is joined by a Merge.

    Session graphs only (outside ``tf.function``, where auto control dependencies would spread
    a dead op's deadness); takes ref variables (nothing is captured). Private API
    (``control_flow_ops.switch``/``merge``), present from TF 1.15 to 2.21.
    """
    from tensorflow.python.ops import control_flow_ops

    with tf.name_scope("safegrad_cond"):
        pred = tf.convert_to_tensor(pred)
        if_false, if_true = control_flow_ops.switch(pred, pred)
        pivots = (tf.identity(if_false, name="switch_f"), tf.identity(if_true, name="switch_t"))
    results = []
    for branch, pivot in ((false_fn, pivots[0]), (true_fn, pivots[1])):
        with tf.control_dependencies([pivot]):
            # (the Identities are created here, so they are gated even if the branch returns
            # tensors made before the cond)
            results.append(tf.nest.map_structure(tf.identity, branch()))
    tf.nest.assert_same_structure(results[0], results[1])
    return tf.nest.map_structure(
        lambda if_false, if_true: control_flow_ops.merge([if_false, if_true], name="safegrad_cond_merge")[0],
        results[0], results[1],
    )


def colocate_with(tensor):
    """Colocates graph ops with ``tensor``, as ``tf.clip_by_global_norm`` does.

    TF 1.x only: TF 2.x's placer colocates by itself. The ``Graph`` method is used because TF
    1.15's ``tf.compat.v1.colocate_with`` logs a deprecation warning on every call.
    """
    if TF_VERSION >= (2, 0) or tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf1.get_default_graph().colocate_with(tensor)


def do_not_convert(function):
    """Keeps AutoGraph out of safegrad's own code when a user's tf.function calls it.

    safegrad's Python control flow is over Python values; converting it would only slow tracing
    and risk turning build-time checks into graph ops. (``tf.autograph.experimental.
    do_not_convert`` exists from TF 1.14 on; the fallback is for builds without AutoGraph.)
    """
    marker = getattr(getattr(tf.autograph, "experimental", None), "do_not_convert", None)
    return marker(function) if marker is not None else function


@contextlib.contextmanager
def resource_variable_creation():
    """Silences TF 1.15's deprecation warning for creating any resource variable.

    TF 1.15 passes ``constraint`` to ``BaseResourceVariable.__init__`` itself and then logs
    "calling BaseResourceVariable.__init__ ... with constraint is deprecated" for every resource
    variable: nothing a user can act on, and plain v1 code (ref variables) never sees it. TF 2.x
    does not log it. ``deprecation._PRINT_DEPRECATION_WARNINGS`` (private; the flag TF's own
    ``deprecation.silence`` sets, without restoring it on errors) is checked on TF 1.15.
    """
    if TF_VERSION >= (2, 0):
        yield
        return
    from tensorflow.python.util import deprecation

    printing = deprecation._PRINT_DEPRECATION_WARNINGS
    deprecation._PRINT_DEPRECATION_WARNINGS = False
    try:
        yield
    finally:
        deprecation._PRINT_DEPRECATION_WARNINGS = printing


def track_dependency(owner, trackable, name):
    """Makes ``tf.train.Checkpoint(optimizer=owner)`` save ``trackable`` too.

    ``_track_trackable`` is the one private hook every Trackable has had from TF 1.15 to 2.21 (v1
    optimizers, Keras 2 and Keras 3 optimizers alike); without it there is nothing to do.
    """
    hook = getattr(owner, "_track_trackable", None)
    if hook is None:
        return False
    try:
        hook(trackable, name=name, overwrite=True)
    except (TypeError, ValueError):
        return False
    return True


# token -> function, kept alive for the life of the process (the registry holds weak references).
_PY_FUNCTIONS = {}


def py_function_op(function, inputs, output_dtype, token):
    """A graph op that calls ``function(*numpy_inputs)``, registered under a FIXED ``token``.

    ``tf.numpy_function`` registers its function under a counter token and drops it when the graph
    is collected, so a graph exported with ``export_meta_graph`` and imported again (a later
    process, or after the first graph is gone) fails with "callback pyfunc_N is not found".
    Registered under ``token`` at import of safegrad, the op works in any process that imported
    safegrad. Private API (``script_ops._py_funcs``, ``gen_script_ops.py_func``), unchanged from
    TF 1.15 to 2.21; without it, ``tf.numpy_function`` (same process only).
    """
    try:
        from tensorflow.python.ops import gen_script_ops, script_ops

        registry = script_ops._py_funcs
        registry._funcs[token] = function
    except (ImportError, AttributeError, TypeError):  # pragma: no cover
        return tf1.numpy_function(function, inputs, output_dtype, name=token)
    _PY_FUNCTIONS[token] = function
    return gen_script_ops.py_func(input=inputs, token=token, Tout=[output_dtype], name=token)[0]


@contextlib.contextmanager
def op_callback(callback):
    """Calls ``callback(op_type, inputs, attrs, outputs, op_name=None, graph=None)`` for every op
    run (eagerly) or built (in a graph) inside the block.

    The mechanism of ``tf.debugging.enable_check_numerics``: ``op_callbacks.add_op_callback``,
    private, present from TF 2.2 to 2.21. TF 1.15 has none: RuntimeError.
    """
    try:
        from tensorflow.python.framework import op_callbacks
    except ImportError:
        op_callbacks = None
    if op_callbacks is None or not hasattr(op_callbacks, "add_op_callback"):
        raise RuntimeError(
            "safegrad.explain needs TensorFlow's op callbacks (TF 2.2+); this is TensorFlow {}. In "
            "a tf.compat.v1 graph use safegrad.explain_session(sess, train_op, feed_dict).".format(
                tf.__version__
            )
        )
    op_callbacks.add_op_callback(callback)
    try:
        yield
    finally:
        op_callbacks.remove_op_callback(callback)
