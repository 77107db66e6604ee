"""safegrad's own variables (skip counters, what the last step saw) and what one step outputs.

One ``StepState`` per optimizer (per graph, or one eagerly). In a graph its variables are named
``safegrad_state/<optimizer name>/<field>`` whatever name scope the step is built in, and the
state is listed in the graph collection ``STATE_COLLECTION`` (by name, so it survives
``export_meta_graph`` / ``import_meta_graph``): ``find_step_state`` finds it again without the
optimizer object. ``step_outputs(train_op)`` gives the tensors of one graph step (this step's raw
global norm, applied?, clipped?) to fetch in the same ``Session.run`` as the train op.
"""

import collections
import re
import weakref

from safegrad._compat import do_not_convert, track_dependency
from safegrad._tf import outer_context_key, tf, tf1
from safegrad._variables import new_state_variable

STATE_COLLECTION = "safegrad_step_states"
OUTPUTS_COLLECTION = "safegrad_step_outputs"
STATE_SCOPE = "safegrad_state"  # the name scope of every StepState's variables

# name, dtype, initial value
_FIELDS = (
    ("consecutive_skips", tf.int64, 0),
    ("total_skips", tf.int64, 0),
    ("global_norm", tf.float32, 0.0),
    ("clipped", tf.bool, False),
    ("skipped", tf.bool, False),
    ("steps", tf.int64, 0),
    ("clipped_steps", tf.int64, 0),
    ("global_norm_sum", tf.float64, 0.0),
    ("overflow_skips", tf.int64, 0),
    ("clip_ratio", tf.float32, 1.0),
)
# Fields added after the first release: a meta graph exported before has none (read as None).
_LATER_FIELDS = ("clip_ratio",)
# Fields kept only eagerly (TF2), for TF2 summaries and Keras callbacks, and never saved: so that
# checkpoints, Keras files and graphs keep the variables they had (a graph step's outputs have
# them: ``step_outputs``).
_EAGER_ONLY = ("clip_ratio",)

# owner (optimizer) -> {"eager": StepState or None, "graphs": {graph: StepState}}
_REGISTRY = weakref.WeakKeyDictionary()


class StepState(tf.Module):
    """Variables that ``clip_and_apply`` / ``SafeOptimizer`` update on every step.

    They are ordinary non-trainable variables: ``tf.compat.v1.train.Saver`` saves them in a graph,
    and ``tf.train.Checkpoint(optimizer=...)`` saves them in TF2 (they are tracked by the
    optimizer). A step that raises changes none of them. In a Session loop, read them after the
    step's ``run``; to fetch this step's norm in the same ``run``, use ``step_outputs(train_op)``.

    Attributes:
      consecutive_skips: int64, non-finite steps skipped in a row (reset by an applied step).
      total_skips: int64, all skipped steps.
      global_norm: float32, global norm of the raw gradients at the last step (NaN/Inf if it
        was not finite).
      clipped: bool, whether a norm bound was active at the last step.
      skipped: bool, whether the last step was skipped.
      steps: int64, all steps taken (applied and skipped).
      clipped_steps: int64, applied steps on which a norm bound was active.
      global_norm_sum: float64, sum of the global norms of all applied steps (for averages
        over an interval: difference of two readings / difference in applied steps).
      overflow_skips: int64, skipped steps (in ``total_skips``) that were a loss-scale
        optimizer's routine overflow: the scale was lowered; never raised on.
      clip_ratio: float32, at the last step the scale the global-norm bound applied,
        ``min(1, clip_norm / global_norm)`` (1.0 without ``clip_norm``, and for a skipped step).
        Eagerly (TF2) only, and not in ``all_variables`` (so Savers and Keras files keep the
        variables they had); None in a graph, where ``step_outputs(train_op)`` has this step's.
      scope: in a graph, the name scope of the variables (``safegrad_state/<optimizer name>``).
    """

    def __init__(self, owner_name="optimizer", variables=None):
        super().__init__(name="safegrad_state")
        if variables is None:
            variables, self.scope = _create_variables(owner_name)
        else:
            self.scope = owner_name
        for name, _, _ in _FIELDS:
            setattr(self, name, variables.get(name))

    @property
    def all_variables(self):
        """Every variable, in a fixed order (what savers list)."""
        return [getattr(self, name) for name, _, _ in _FIELDS
                if name not in _EAGER_ONLY and getattr(self, name) is not None]

    def record_applied(self, global_norm, clipped, reset_streak, clip_ratio=None):
        """Assignments for an applied step; returns the ops to depend on (none eagerly)."""
        ops = [
            None if self.clip_ratio is None else self.clip_ratio.assign(
                1.0 if clip_ratio is None else clip_ratio, read_value=False
            ),
            self.global_norm.assign(global_norm, read_value=False),
            self.clipped.assign(clipped, read_value=False),
            self.skipped.assign(False, read_value=False),
            self.steps.assign_add(1, read_value=False),
            self.clipped_steps.assign_add(tf.cast(clipped, tf.int64), read_value=False),
            self.global_norm_sum.assign_add(tf.cast(global_norm, tf.float64), read_value=False),
        ]
        if reset_streak:
            ops.append(self.consecutive_skips.assign(0, read_value=False))
        return [op for op in ops if op is not None]

    def record_skipped(self, global_norm, overflow=None):
        """Assignments for a skipped step; returns the ops to depend on (none eagerly).
        ``overflow``: bool tensor, the skip was a loss scale's routine overflow."""
        ops = [
            None if overflow is None else self.overflow_skips.assign_add(
                tf.cast(overflow, tf.int64), read_value=False
            ),
            self.consecutive_skips.assign_add(1, read_value=False),
            self.total_skips.assign_add(1, read_value=False),
            self.global_norm.assign(global_norm, read_value=False),
            self.clipped.assign(False, read_value=False),
            None if self.clip_ratio is None else self.clip_ratio.assign(1.0, read_value=False),
            self.skipped.assign(True, read_value=False),
            self.steps.assign_add(1, read_value=False),
        ]
        return [op for op in ops if op is not None]

    def __repr__(self):
        try:
            values = self.snapshot()
        except (NotImplementedError, AttributeError, ValueError, TypeError):
            # A graph's variables are read with a Session: show where they are.
            names = ", ".join(v.name for v in self.all_variables)
            return "StepState(graph variables: {}; read them with sess.run)".format(names)
        if self.clip_ratio is not None:
            values["clip_ratio"] = float(self.clip_ratio.numpy())
        values["clipped"] = bool(self.clipped.numpy())
        values["skipped"] = bool(self.skipped.numpy())
        return "StepState({})".format(", ".join("{}={!r}".format(k, v) for k, v in values.items()))

    def snapshot(self):
        """Current values of the saved fields as a dict of Python numbers (eager only)."""
        return {
            "consecutive_skips": int(self.consecutive_skips.numpy()),
            "total_skips": int(self.total_skips.numpy()),
            "global_norm": float(self.global_norm.numpy()),
            "steps": int(self.steps.numpy()),
            "clipped_steps": int(self.clipped_steps.numpy()),
            "global_norm_sum": float(self.global_norm_sum.numpy()),
            "overflow_skips": int(self.overflow_skips.numpy()),
        }


def _owner_name(owner):
    get_name = getattr(owner, "get_name", None)  # v1 optimizers
    name = get_name() if callable(get_name) else getattr(owner, "name", None)
    if not isinstance(name, str):  # Keras OptimizerV2 of TF 2.0-2.10 (no public `name`)
        name = getattr(owner, "_name", None)
    if not isinstance(name, str) or not name:
        name = type(owner).__name__
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _create_variables(owner_name):
    """The state's variables, and in a graph their scope (listed in ``STATE_COLLECTION``)."""
    with tf.init_scope():
        if tf.executing_eagerly():
            with tf.name_scope("safegrad_state"):
                return {name: new_state_variable(v, dtype, name) for name, dtype, v in _FIELDS}, None
        # An absolute scope: the same names whatever scope the step is built in.
        with tf1.name_scope("safegrad_state/"), tf1.name_scope(owner_name) as scope:
            variables = {name: new_state_variable(v, dtype, name) for name, dtype, v in _FIELDS
                         if name not in _EAGER_ONLY}
        scope = scope.rstrip("/")
        tf1.add_to_collection(STATE_COLLECTION, scope)
        return variables, scope


@do_not_convert
def step_state(optimizer):
    """The ``StepState`` safegrad keeps for ``optimizer`` in the current graph (or eagerly).

    Created on first use. In a graph there is one per graph, so it is fetched with
    ``sess.run(state.global_norm)`` etc.; eagerly and in ``tf.function`` there is one, read with
    ``state.global_norm.numpy()``. Calling it once before the first call of a ``tf.function``
    that uses ``clip_and_apply`` keeps that function from being traced twice (TF retraces a
    function that creates variables in its first call). Every ``clip_and_apply`` call with the
    same optimizer updates the same state.

    Args:
      optimizer: the optimizer passed to ``clip_and_apply``, or a ``SafeOptimizer``.

    Returns:
      The ``StepState``.

    Example:
      >>> train_op = safegrad.clip_and_apply(opt, loss, clip_norm=1.0, on_nonfinite="skip")
      >>> state = safegrad.step_state(opt)
      >>> sess.run(train_op); sess.run([state.global_norm, state.skipped, state.total_skips])
    """
    key = outer_context_key()
    entry = _REGISTRY.get(optimizer)
    if entry is None:
        entry = {"eager": None, "graphs": weakref.WeakKeyDictionary()}
        _REGISTRY[optimizer] = entry
    if key is None:
        if entry["eager"] is None:
            entry["eager"] = StepState(_owner_name(optimizer))
            track_dependency(optimizer, entry["eager"], "safegrad_state")
        return entry["eager"]
    state = entry["graphs"].get(key)
    if state is None:
        with key.as_default():
            state = StepState(_owner_name(optimizer))
        entry["graphs"][key] = state
    return state


def find_step_state(scope=None, graph=None):
    """The ``StepState`` of a graph, found without the optimizer (e.g. after ``import_meta_graph``).

    Args:
      scope: the state's ``scope``, ``"safegrad_state/<optimizer name>"`` (e.g.
        ``"safegrad_state/Adam"``); may be omitted when the graph has one state.
      graph: the graph; default: the current default graph.

    Returns:
      A ``StepState`` over the graph's variables (read them with ``sess.run``).

    Raises:
      ValueError: naming the states the graph has, when none or several match.

    Example:
      >>> tf.compat.v1.train.import_meta_graph("model.ckpt.meta")
      >>> state = safegrad.find_step_state()
      >>> sess.run(state.total_skips)
    """
    graph = graph if graph is not None else tf1.get_default_graph()
    scopes = [_as_text(s) for s in graph.get_collection(STATE_COLLECTION)]
    matching = [s for s in scopes if scope is None or s == scope]
    if not scopes:
        raise ValueError(
            "The graph has no safegrad state: no clip_and_apply / SafeOptimizer step was built in it "
            "(or its meta graph was not imported)."
        )
    if scope is None and len(matching) > 1:
        raise ValueError(
            "The graph has several safegrad states, one per optimizer: {}. Pass scope= to choose "
            "one.".format(scopes)
        )
    if len(matching) != 1:
        raise ValueError(
            "`scope` must name one of the graph's safegrad states: {}. Received: scope={!r}".format(
                scopes, scope
            )
        )
    by_name = {v.op.name: v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
    missing = [name for name, _, _ in _FIELDS
               if "{}/{}".format(matching[0], name) not in by_name and name not in _LATER_FIELDS]
    if missing:
        raise ValueError(
            "The graph lists the safegrad state {!r} but not its variables {} (restore the whole "
            "meta graph).".format(matching[0], missing)
        )
    return StepState(
        matching[0], {name: by_name.get("{}/{}".format(matching[0], name)) for name, _, _ in _FIELDS}
    )


def _as_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


StepOutputs = collections.namedtuple(
    "StepOutputs", ["global_norm", "applied", "clipped", "skipped", "clip_ratio", "total_skips"]
)
StepOutputs.__doc__ = """The tensors of one graph step, to fetch with its train op: THIS step's values.

global_norm: float32, this step's global norm of the raw gradients (NaN/Inf if not finite).
applied: bool, whether this step's update was applied (False: skipped).
clipped: bool, whether this step was applied with a norm bound active.
skipped: bool, whether this step is skipped (a non-finite step in skip mode, or a loss scale's
  overflow).
clip_ratio: float32, the scale the global-norm bound applies, ``min(1, clip_norm / global_norm)``
  (1.0 without ``clip_norm``, and for a skipped step).
total_skips: int64, safegrad's count of skipped steps including this one.

``applied`` and ``clipped`` come from the update itself: fetching them runs the step. The other
four are computed before the decision: fetching them alone (e.g. in summaries run on evaluation
data) recomputes the gradients but changes nothing.
"""


def record_step_outputs(train_op, outputs, report=None, loss=None):
    """Lists ``outputs`` (a ``StepOutputs``) of the graph step ``train_op`` in
    ``OUTPUTS_COLLECTION`` (by name), with the string tensor naming its non-finite gradients and
    the loss it was computed from (each may be None)."""
    names = [train_op.name] + [t.name for t in outputs] + [t.name if t is not None else "" for t in (report, loss)]
    tf1.add_to_collection(OUTPUTS_COLLECTION, "|".join(names))


def _outputs_entry(train_op):
    for entry in train_op.graph.get_collection(OUTPUTS_COLLECTION):
        names = _as_text(entry).split("|")
        if names[0] == train_op.name:
            return names[1:]
    return None


def step_report(train_op):
    """(report, loss) of the graph step ``train_op``: the string tensor naming its non-finite
    gradients ("" when all are finite) and its loss; each None if unknown."""
    names = _outputs_entry(train_op) if isinstance(train_op, tf1.Operation) else None
    extra = (names or [])[len(StepOutputs._fields):] + ["", ""]
    return tuple(train_op.graph.get_tensor_by_name(n) if n else None for n in extra[:2])


def step_outputs(train_op):
    """This step's global norm, applied? and clipped?, to fetch in the same ``Session.run``.

    ``safegrad.step_state(optimizer).global_norm`` is a variable: fetched together with the train
    op it may show the previous step's value. These tensors are the step's own (also found after
    ``import_meta_graph``, by the train op's name).

    Args:
      train_op: the op returned by ``clip_and_apply`` / ``SafeOptimizer.minimize`` /
        ``apply_gradients`` in a graph.

    Returns:
      A ``StepOutputs`` namedtuple of tensors (global_norm, applied, clipped).

    Raises:
      TypeError: eagerly or in ``tf.function`` (there the step returns ``applied`` and the
        ``StepState`` holds this step's values once it returned), or for an op safegrad did not
        build.

    Example:
      >>> train_op = safegrad.clip_and_apply(opt, loss, clip_norm=5.0, on_nonfinite="skip")
      >>> outputs = safegrad.step_outputs(train_op)
      >>> _, norm, applied = sess.run([train_op, outputs.global_norm, outputs.applied])
    """
    if not isinstance(train_op, tf1.Operation):
        raise TypeError(
            "`train_op` must be the op a safegrad step returned in a tf.compat.v1 graph (eagerly "
            "and in tf.function the step returns `applied`, and step_state(optimizer) holds this "
            "step's values once it returned). Received: train_op={!r}".format(train_op)
        )
    names = _outputs_entry(train_op)
    if names is not None:
        return StepOutputs(*[train_op.graph.get_tensor_by_name(n) for n in names[: len(StepOutputs._fields)]])
    raise TypeError(
        "`train_op` was not built by safegrad.clip_and_apply / SafeOptimizer. Received: "
        "train_op={!r}".format(train_op)
    )
