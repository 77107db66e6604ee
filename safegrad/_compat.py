"""Every TensorFlow- and Keras-version difference safegrad knows about, in one module.

The rest of safegrad is written once, against ``tensorflow.compat.v2`` (``tf``), and uses
``tensorflow.compat.v1`` (``tf1``) only for graphs, sessions and v1 optimizers. Whatever differs
between TF 1.15 and the newest TF, or between Keras 2, the Keras 2.11 optimizers and Keras 3, is
decided here, by feature detection wherever a feature can be tested. Each shim names the versions
that need it, so it can be deleted when those versions are dropped.

Nothing here imports Keras eagerly: under TF >= 2.16 touching ``tf.keras`` loads Keras 3, which
costs seconds, and a TF1 user of safegrad never needs it.
"""

import contextlib
import importlib.abc
import inspect
import re
import sys
import warnings

MIN_TF_VERSION = (1, 15)

try:
    import tensorflow as _tf_root
except ImportError as _error:  # pragma: no cover - exercised only without TensorFlow
    raise ImportError(
        "safegrad needs TensorFlow >= {}.{}, but TensorFlow is not installed. Install the build you "
        "want, e.g. `pip install tensorflow` or `pip install tensorflow-cpu`, or "
        "`pip install 'safegrad[tf]'`.".format(*MIN_TF_VERSION)
    ) from _error


def _parse_version(text):
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


TF_VERSION_STRING = getattr(_tf_root, "__version__", "0.0")
TF_VERSION = _parse_version(TF_VERSION_STRING)

if TF_VERSION < MIN_TF_VERSION:
    raise ImportError(
        "safegrad needs TensorFlow >= {}.{}; found TensorFlow {} at {}. Upgrade it, e.g. "
        "`pip install -U tensorflow`.".format(
            MIN_TF_VERSION[0], MIN_TF_VERSION[1], TF_VERSION_STRING, getattr(_tf_root, "__file__", "?")
        )
    )

from tensorflow.compat import v1 as tf1  # noqa: E402  (after the version check on purpose)
from tensorflow.compat import v2 as tf  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Execution context
# ---------------------------------------------------------------------------------------------


def executing_eagerly():
    return tf.executing_eagerly()


def inside_function():
    """True while tracing a tf.function body (or a cond_v2/while_v2 branch function)."""
    return bool(getattr(tf1.get_default_graph(), "building_function", False))


def in_xla_context():
    """True while tracing code XLA will compile (``tf.function(jit_compile=True)``, Keras
    ``jit_compile``, TPU). XLA has no string ops, no ``Unique`` and drops ``Assert``.

    ``control_flow_util.GraphOrParentsInXlaContext`` is the check TF's own ops use; it is private
    but present, unchanged, from TF 1.15 to 2.21. Without it, assume no XLA.
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf1.get_default_graph()))


def lazy_cond(pred, true_fn, false_fn):
    """``tf.cond`` whose untaken branch costs nothing at run time.

    A lowered cond (Switch/Merge, what TF 1.x builds and TF 2.x lowers ``If`` ops to) pays, on
    every step, one Switch per captured tensor plus a dead-node visit for every op of the untaken
    branch. The overflow/diagnosis branch of the global norm captures every gradient and has ~20
    ops per gradient: on a 200-variable model that was 6-12% of a step in a Session. An ``If`` op
    kept as a function call (``_lower_using_switch_merge=False``) runs only the taken branch.
    Private API (``cond_v2``, the lowering attribute), present from TF 1.15 to 2.21; branches
    must not capture ref variables (TF1) - the callers capture only tensors.
    """
    if tf.executing_eagerly():
        return tf.cond(pred, true_fn, false_fn)
    from tensorflow.core.framework import attr_value_pb2
    from tensorflow.python.ops import cond_v2

    graph = tf1.get_default_graph()
    before = len(graph.get_operations())
    result = cond_v2.cond_v2(pred, true_fn, false_fn, name="safegrad_cond")
    for op in graph.get_operations()[before:]:
        if op.type in ("If", "StatelessIf"):
            op._set_attr("_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))
    return result


def outer_context_key():
    """The graph that variables created now would live in, or None when that is eager.

    ``tf.init_scope`` lifts out of ``tf.function`` bodies and control-flow branches, so a
    ``tf.function`` traced several times, or a cond branch, maps to the same key as its caller.
    """
    with tf.init_scope():
        if tf.executing_eagerly():
            return None
        return tf1.get_default_graph()


def colocate_with(tensor):
    """Colocates graph ops with ``tensor``, as ``tf.clip_by_global_norm`` does.

    TF 1.x only: TF 2.x's placer colocates by itself and deprecates the explicit call.
    """
    if TF_VERSION >= (2, 0) or tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf1.colocate_with(tensor)


def do_not_convert(function):
    """Keeps AutoGraph out of safegrad's own code when a user's tf.function calls it.

    safegrad's Python control flow is over Python values; converting it would only slow tracing
    and risk turning build-time checks into graph ops. (`tf.autograph.experimental.do_not_convert`
    exists from TF 1.14 on; the fallback is for builds without AutoGraph.)
    """
    marker = getattr(getattr(tf.autograph, "experimental", None), "do_not_convert", None)
    return marker(function) if marker is not None else function


def raise_invalid_argument(message):
    """Raises the error a failed graph assertion would raise, eagerly, with ``message`` verbatim."""
    raise tf.errors.InvalidArgumentError(None, None, message)


def as_control_input(value):
    """``value`` if it can be a control dependency (an op or tensor), else None.

    Keras 3 optimizers return a Keras variable from ``apply_gradients``; inside a ``tf.function``
    automatic control dependencies order its updates anyway, so it is simply not listed.
    """
    if isinstance(value, (tf1.Operation, tf.Tensor)):
        return value
    return None


# ---------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------

_TENSOR_SUFFIX = re.compile(r":\d+$")


def is_variable(value):
    """True for tf.Variable (ref or resource, mirrored, autocast) and for Keras 3 variables.

    Keras 3 variables are not ``tf.Variable`` subclasses, so this is duck-typed.
    """
    if isinstance(value, tf.Variable):
        return True
    return all(hasattr(value, attr) for attr in ("assign", "assign_add", "dtype", "shape", "name"))


def variable_name(variable):
    """The name a user recognises: Keras 3 ``path`` ('sequential/dense/kernel'), else the TF name
    without its ':0' output suffix ('dense/kernel', 'poisoned_weight')."""
    path = getattr(variable, "path", None)  # Keras 3 variables (TF >= 2.16)
    if isinstance(path, str) and path:
        return path
    name = getattr(variable, "name", None)
    if isinstance(name, str) and name:
        return _TENSOR_SUFFIX.sub("", name)
    return repr(variable)


def trainable_variables_in_graph():
    """What ``tf1.train.Optimizer.compute_gradients`` optimises by default in a graph."""
    variables = list(tf1.trainable_variables())
    variables += [
        v
        for v in tf1.get_collection(tf1.GraphKeys.TRAINABLE_RESOURCE_VARIABLES)
        if all(v is not w for w in variables)
    ]
    return variables


def new_state_variable(initial_value, dtype, name):
    """A non-trainable resource variable for safegrad's own state (counters, last-step stats).

    Created under ``tf.init_scope`` so that a ``tf.function`` or cond branch creates it once, in
    the outer context; in a graph it joins GLOBAL_VARIABLES, so ``tf1.train.Saver`` and
    ``global_variables_initializer`` see it.
    """
    with tf.init_scope():
        # Under tf.distribute: mirrored, and updated from replica context with replica 0's value
        # (every replica computes the same statistics from the same summed gradients).
        return tf.Variable(
            initial_value, dtype=dtype, trainable=False, name=name,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


def track(owner, trackable, name):
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


# ---------------------------------------------------------------------------------------------
# Optimizer families
# ---------------------------------------------------------------------------------------------

V1 = "tf.compat.v1.train.Optimizer"
KERAS_V2 = "Keras 2 OptimizerV2"  # tf.keras.optimizers in TF 2.0-2.10; `.legacy` in 2.11-2.15/tf-keras
KERAS_2_11 = "Keras 2 optimizer (TF 2.11-2.15, tf-keras)"  # the rewritten optimizer of Keras 2.11+
KERAS_3 = "Keras 3 optimizer"  # tf.keras in TF >= 2.16 without TF_USE_LEGACY_KERAS
KERAS_FAMILIES = (KERAS_V2, KERAS_2_11, KERAS_3)


def optimizer_family(optimizer):
    """Which optimizer API ``optimizer`` speaks, or None if it is not an optimizer."""
    return optimizer_family_of_class(type(optimizer))


def optimizer_family_of_class(cls):
    """``optimizer_family`` for a class (e.g. a Keras optimizer base class)."""
    if issubclass(cls, tf1.train.Optimizer):
        return V1
    if not callable(getattr(cls, "apply_gradients", None)):
        return None
    # Keras 3 only: its base class has `stateless_apply` (JAX-style API shared by all backends).
    if callable(getattr(cls, "stateless_apply", None)):
        return KERAS_3
    # Keras 2 OptimizerV2 (TF 2.0-2.10, and the `legacy` optimizers of 2.11-2.15 / tf-keras).
    if callable(getattr(cls, "_create_all_weights", None)) and callable(getattr(cls, "get_slot", None)):
        return KERAS_V2
    # The Keras 2.11+ optimizer: `build(var_list)` plus `exclude_from_weight_decay`.
    if callable(getattr(cls, "build", None)) and callable(getattr(cls, "exclude_from_weight_decay", None)):
        return KERAS_2_11
    return None


def compute_gradients(optimizer, family, loss, var_list, tape):
    """Obtains (gradient, variable) pairs for ``loss`` the way each mode and family expects.

    * ``tape`` given: ``tape.gradient`` (TF2 eager / tf.function with a recorded loss tensor).
    * v1 optimizer otherwise: ``optimizer.compute_gradients`` - callable losses in eager and
      tf.function, tensors in graphs - so subclasses that hook it (loss scaling, Horovod's
      all-reduce, replica loss scaling under tf.distribute) keep working.
    * Keras optimizer: a GradientTape around a callable loss; ``tf.gradients`` for a tensor loss
      in a graph. (Keras optimizers have no graph-mode ``compute_gradients``; Keras 3 has none.)
    """
    if tape is not None:
        variables = _resolve_var_list(var_list)
        if variables is None:
            variables = list(tape.watched_variables())
        return list(zip(tape.gradient(loss, variables), variables))
    if family == V1 and _uses_own_compute_gradients(optimizer) and not (callable(loss) and callable(var_list)):
        # (v1 compute_gradients cannot take a callable var_list: TF1 has no such notion and
        # TF2's tape.watch()es it before the loss runs. Those cases take the tape path below.)
        if callable(var_list):
            var_list = var_list()
        return list(optimizer.compute_gradients(loss, var_list=var_list))
    if callable(loss):
        # A callable var_list is read after the loss ran (v1 semantics: a Keras model may create
        # its weights on that first call).
        explicit = None if callable(var_list) else _resolve_var_list(var_list)
        with tf.GradientTape() as recorded:
            for variable in explicit or ():
                if isinstance(variable, tf.Variable):
                    recorded.watch(variable)
            loss_value = loss()
        variables = explicit if explicit is not None else _resolve_var_list(var_list)
        if variables is None:
            variables = list(recorded.watched_variables())
        return list(zip(recorded.gradient(loss_value, variables), variables))
    variables = _resolve_var_list(var_list)
    if variables is None:
        variables = trainable_variables_in_graph()
    if not variables:
        raise ValueError("No variables to optimize: pass `var_list`. Received: var_list=None")
    return list(zip(tf.gradients(loss, variables), variables))


def _uses_own_compute_gradients(optimizer):
    """Whether a v1 optimizer's gradients must come from its own ``compute_gradients``.

    Needed when a subclass overrides it (loss scaling, Horovod's all-reduce) and under a
    tf.distribute strategy (it divides the loss by the replica count). Otherwise the base method
    only adds cost: in a graph it gates every gradient op (GATE_OP) and under TF2 it makes every
    gradient wait for the loss value, 20% of an M1 step in tf.function (benchmarks/).
    """
    overridden = type(optimizer).compute_gradients is not tf1.train.Optimizer.compute_gradients
    return overridden or tf.distribute.has_strategy()


def _resolve_var_list(var_list):
    if var_list is None:
        return None
    if callable(var_list):
        var_list = var_list()
    return list(var_list)


def prepare_optimizer(optimizer, family, variables):
    """Creates the optimizer's slots/accumulators/iteration counter now, outside any tf.cond.

    A skipped step must leave every optimizer variable untouched, so the update runs inside a
    cond; variables must not be first created inside a branch. v1 optimizers lift slot creation
    with ``init_scope`` themselves (TF 1.15-2.x ``apply_gradients``), as does Keras 2.11+
    ``apply_gradients``; the other families need it done here.
    """
    with tf.init_scope():
        if family == KERAS_V2:
            optimizer._create_all_weights(variables)  # Keras OptimizerV2, TF 2.2-2.15 / tf-keras
        elif family == KERAS_2_11:
            optimizer.build(variables)  # idempotent once built
        elif family == KERAS_3:
            if not optimizer.built:
                optimizer.build(variables)


def apply_gradients(optimizer, family, grads_and_vars, global_step, name, aggregated=False):
    """Applies ``grads_and_vars`` (no None gradients) and advances ``global_step`` by one.

    ``aggregated``: the gradients were already summed across replicas (a Keras wrapper did it
    before checking them), so the optimizer must not aggregate them again.

    Returns a list of control inputs that complete the update (empty when nothing needs listing).
    """
    grads_and_vars = list(grads_and_vars)
    if family == V1:
        update = optimizer.apply_gradients(grads_and_vars, global_step=global_step, name=name)
        return [d for d in [as_control_input(update)] if d is not None]
    if family == KERAS_3:
        result = optimizer.apply_gradients(grads_and_vars)  # Keras 3 takes no `name`
    elif family == KERAS_2_11:
        result = optimizer.apply_gradients(
            grads_and_vars, name=name, skip_gradients_aggregation=aggregated
        )
    elif aggregated:  # Keras OptimizerV2, TF >= 2.2
        result = optimizer.apply_gradients(
            grads_and_vars, name=name, experimental_aggregate_gradients=False
        )
    else:
        result = optimizer.apply_gradients(grads_and_vars, name=name)
    deps = [d for d in [as_control_input(result)] if d is not None]
    if global_step is None:
        return deps
    with tf.control_dependencies(deps):
        increment = as_control_input(global_step.assign_add(1, read_value=False))
    return deps + ([increment] if increment is not None else [])


def can_fold_scale(optimizer):
    """Whether the global clip scale can go into the update instead of into every gradient.

    Exactly for plain gradient descent, ``w - lr * (s * g) == w - (lr * s) * g``: then safegrad
    does not write a scaled copy of every gradient (a full pass over all of them, and on a
    200-variable model most of the cost of clipping beyond the norm itself; see benchmarks/).
    Only the exact class: a subclass may change the update.
    """
    return type(optimizer) is tf1.train.GradientDescentOptimizer


def scaled_gradient_descent(optimizer, scale):
    """A ``GradientDescentOptimizer`` equal to ``optimizer`` but with learning rate
    ``learning_rate * scale``. Gradient descent has no slots, so a per-step twin is stateless."""
    learning_rate = optimizer._learning_rate  # float, tensor, or (TF2) zero-argument callable
    if callable(learning_rate):
        learning_rate = learning_rate()
    learning_rate = tf.convert_to_tensor(learning_rate)
    return tf1.train.GradientDescentOptimizer(
        learning_rate * tf.cast(scale, learning_rate.dtype),
        use_locking=optimizer._use_locking,
        name=optimizer.get_name(),
    )


# ---------------------------------------------------------------------------------------------
# tf.distribute
# ---------------------------------------------------------------------------------------------


def replica_context():
    """The ReplicaContext of a real tf.distribute strategy (inside ``strategy.run``), else None.

    Raises ValueError in cross-replica context (inside ``strategy.scope()`` but not
    ``strategy.run``), where a training step cannot be taken.
    """
    if not tf.distribute.has_strategy():
        return None
    if tf.distribute.in_cross_replica_context():
        raise ValueError(
            "safegrad steps run in replica context: call them inside strategy.run(...), not "
            "directly under strategy.scope()."
        )
    return tf.distribute.get_replica_context()


def all_reduce_sum(replica, gradients):
    """The gradients summed over all replicas (every replica gets the same sums)."""
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, list(gradients))


def sums_replicas_itself(family):
    """Whether the optimizer sums gradients across replicas whatever it is told: v1 optimizers
    (``_distributed_apply`` always reduces) and Keras 3 (``_backend_update_step`` always
    all-reduces in replica context). Keras 2 optimizers take an "already aggregated" flag."""
    return family in (V1, KERAS_3)


def first_replica_only(replica, gradient):
    """``gradient`` on replica 0, zeros elsewhere: their sum is exactly ``gradient``."""
    first = tf.equal(replica.replica_id_in_sync_group, 0)
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(first, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(first, gradient.dtype)


def decide_across_replicas(replica, pred, apply_fn, apply_args, skip_fn, skip_args):
    """``apply_fn(*apply_args)`` on every replica if ``pred`` else ``skip_fn(*skip_args)`` once.

    The decision is taken once, in cross-replica context (Keras's LossScaleOptimizer does the
    same): ``pred`` is the same on every replica (computed from all-reduced gradients); replica
    0's value decides. Arguments pass through merge_call, so each replica applies its own copies.
    """
    apply_args = [_placeholder_for_none(a) for a in apply_args]
    skip_args = [_placeholder_for_none(a) for a in skip_args]

    def merge_fn(strategy, pred, apply_args, skip_args):
        decision = strategy.experimental_local_results(pred)[0]
        first = [_none_for_placeholder(strategy.experimental_local_results(a)[0]) for a in skip_args]

        def apply_all():
            strategy.extended.call_for_each_replica(
                lambda *args: apply_fn(*[_none_for_placeholder(a) for a in args]), args=tuple(apply_args)
            )
            return tf.constant(True)

        return tf.cond(decision, apply_all, lambda: skip_fn(*first))

    return replica.merge_call(merge_fn, args=(pred, apply_args, skip_args))


_NONE = "safegrad-none"


def _placeholder_for_none(value):
    return tf.constant(_NONE) if value is None else value


def _none_for_placeholder(value):
    if isinstance(value, tf.Tensor) and value.dtype == tf.string and tf.get_static_value(value) == _NONE.encode():
        return None
    return value


def graph_mode_unsupported(family):
    """Why ``family`` cannot build a TF1-style graph step, or None if it can."""
    if family == KERAS_3:
        return (
            "Keras 3 optimizers run only eagerly or inside tf.function, not in a "
            "tf.compat.v1 graph/Session. Use a tf.compat.v1.train optimizer there."
        )
    if family == KERAS_2_11:
        # Its apply_gradients builds update ops but returns the iterations variable, so a graph
        # step would silently not train (seen with TF 2.15).
        return (
            "the Keras 2.11+ optimizers do not support tf.compat.v1 graphs/Sessions. Use "
            "tf.keras.optimizers.legacy.* or a tf.compat.v1.train optimizer there, or run "
            "eagerly / inside tf.function."
        )
    return None


# ---------------------------------------------------------------------------------------------
# Keras: what the Keras optimizer wrappers (safegrad/_keras.py) need from each Keras generation
# ---------------------------------------------------------------------------------------------

KERAS_CLIPPING_ARGUMENTS = ("clipnorm", "clipvalue", "global_clipnorm")


def keras():
    """The Keras behind ``tf.keras`` (Keras 2, Keras 3, or tf-keras with TF_USE_LEGACY_KERAS)."""
    return _tf_root.keras


def keras_major_version():
    """3 for Keras 3 (only it has ``keras.version()``), else 2."""
    return 3 if callable(getattr(keras(), "version", None)) else 2


def keras_optimizer_base(optimizer):
    """The Keras base class of ``optimizer``: the class a wrapper of it must subclass.

    Found in the optimizer's own MRO (feature detection), so it is right for TF 2.4's bundled
    Keras (``OptimizerV2``), Keras 2.11-2.15 and tf-keras (``Optimizer`` or
    ``legacy``/``OptimizerV2``) and Keras 3 (``Optimizer``).
    """
    for cls in type(optimizer).__mro__[1:]:
        if cls.__name__ in ("Optimizer", "OptimizerV2") and cls.__module__.split(".")[0] in (
            "keras", "tf_keras", "tensorflow"
        ):
            return cls
    raise TypeError("not a Keras optimizer: {!r}".format(optimizer))


def delegating_trackable_mixin():
    """The mixin that makes a wrapper look like the optimizer it wraps to checkpoints.

    Public as ``tf.__internal__.tracking.DelegatingTrackableMixin`` from TF 2.6; TF 2.4-2.5 only
    have Keras's private copy in its LossScaleOptimizer module.
    """
    tracking = getattr(getattr(_tf_root, "__internal__", None), "tracking", None)
    mixin = getattr(tracking, "DelegatingTrackableMixin", None)
    if mixin is None:  # TF 2.4-2.5
        from tensorflow.python.keras.mixed_precision import loss_scale_optimizer

        mixin = loss_scale_optimizer._DelegatingTrackableMixin
    return mixin


def no_automatic_dependency_tracking(method):
    """Stops AutoTrackable from tracking attributes set in ``method`` (Keras 2.11+ optimizers)."""
    tracking = getattr(getattr(_tf_root, "__internal__", None), "tracking", None)
    decorator = getattr(tracking, "no_automatic_dependency_tracking", None)
    if decorator is None:  # TF 2.4-2.5
        from tensorflow.python.training.tracking import base

        decorator = base.no_automatic_dependency_tracking
    return decorator(method)


def serialize_keras_optimizer(optimizer):
    return keras().optimizers.serialize(optimizer)


def deserialize_keras_optimizer(config, custom_objects=None, legacy=False):
    """``keras.optimizers.deserialize``; ``legacy`` selects OptimizerV2 classes where Keras
    2.11-2.15 / tf-keras have both generations (their ``use_legacy_optimizer``)."""
    deserialize = keras().optimizers.deserialize
    parameters = inspect.signature(deserialize).parameters
    if "use_legacy_optimizer" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):  # Keras 2.10-2.15, tf-keras
        return deserialize(config, custom_objects=custom_objects, use_legacy_optimizer=legacy)
    return deserialize(config, custom_objects=custom_objects)  # TF 2.4, Keras 3


def keras_inner_clipping(optimizer):
    """The clipping the Keras optimizer does by itself: {argument: value} of those set."""
    found = {}
    for name in KERAS_CLIPPING_ARGUMENTS:
        try:
            value = getattr(optimizer, name, None)
        except (AttributeError, ValueError):
            value = None
        if value is not None:
            found[name] = value
    return found


def keras_aggregate(optimizer, family, grads_and_vars):
    """All-reduces gradients across replicas the way the optimizer itself would (a no-op with the
    default strategy), so they can be checked before the optimizer applies them unaggregated."""
    if family == KERAS_V2:
        transform = getattr(optimizer, "_transform_unaggregated_gradients", None)
        if transform is not None:
            grads_and_vars = transform(grads_and_vars)
        return optimizer._aggregate_gradients(grads_and_vars)
    if family == KERAS_2_11:
        return optimizer.aggregate_gradients(grads_and_vars)
    return grads_and_vars


_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.python.keras")
_keras_hooks = []


def when_keras_is_imported(callback):
    """Runs ``callback`` once Keras is imported: now if it already is, else right after.

    Loading a model must find safegrad's optimizer classes registered with Keras without paying
    for a Keras import in ``import safegrad`` (TF1 and non-Keras users never need it). TF 2.10+
    imports Keras with TensorFlow anyway; otherwise a one-shot import hook fires after
    ``keras``/``tf_keras`` finishes importing.
    """
    if TF_VERSION < (2, 0):
        return  # the Keras wrappers are TF2-only
    if any(name in sys.modules for name in _KERAS_MODULES):
        _run_keras_callback(callback)
        return
    _keras_hooks.append(callback)
    if not any(isinstance(finder, _KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())


def _run_keras_callback(callback):
    try:
        callback()
    except Exception as error:  # never break the user's Keras import
        warnings.warn("safegrad could not register its Keras classes: {!r}".format(error))


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``keras``/``tf_keras`` to run the callbacks after
    the package executed, then removes itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in ("keras", "tf_keras"):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return None
        hook = self

        def exec_module(module):
            execute(module)
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            while _keras_hooks:
                _run_keras_callback(_keras_hooks.pop(0))

        loader.exec_module = exec_module
        return spec
