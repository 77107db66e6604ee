"""``safegrad.explain_session``: find the first NaN/Inf of a graph step run in a Session.

The failing step is run once more in the same ``Session`` with TensorFlow's own tensor dumps
(tfdbg v1: a ``DebugIdentity`` watch on every node, written to a temporary directory), which
record every executed tensor, inside ``tf.cond`` and ``tf.while_loop`` too, with a timestamp.
The first dumped tensor holding NaN/Inf names the op. For a safegrad train op only its norm is
run: forward and backward pass, no update. Nothing of this runs in a normal step.
"""

import re
import shutil
import tempfile
import warnings

import numpy as np

from safegrad._report import (
    DATA_OPS, INPUT_OP_TYPES, NonFiniteReport, describe_array, is_finite_array, likely_cause, nonfinite_locations,
    user_frame,
)
from safegrad._state import STATE_SCOPE, step_outputs, step_report
from safegrad._tf import tf, tf1


def _debug_modules():
    """tfdbg v1 (``debug_data``, ``debug_utils``): private modules present from TF 1.15 to 2.21."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.debug.lib import debug_data, debug_utils

    return config_pb2, debug_data, debug_utils


def _fetches_to_replay(fetches):
    """(what to run, the report tensor or None): a safegrad train op becomes its norm, its loss
    (known when the step was built from one) and the names of its non-finite gradients."""
    run, report = [], None
    for fetch in tf.nest.flatten(fetches):
        if isinstance(fetch, tf1.Operation):
            try:
                outputs = step_outputs(fetch)
            except TypeError:
                raise TypeError(
                    "`fetches` must be a train op built by safegrad (replayed without its update), "
                    "or the tensors to recompute (e.g. the loss). Running any other op would apply "
                    "it again. Received: fetches={!r}".format(fetches)
                ) from None
            # (The norm alone does not need the forward pass's last ops - a Log's gradient reads
            # the Log's input, not its output - so the loss is run too.)
            report, loss = step_report(fetch)
            run += [outputs.global_norm] + ([loss] if loss is not None else [])
        elif isinstance(fetch, tf.Tensor):
            run.append(fetch)
        else:
            raise TypeError(
                "`fetches` must be a safegrad train op, or a tensor / list of tensors (e.g. the "
                "loss). Received: fetches={!r}".format(fetches)
            )
    if not run:
        raise TypeError("`fetches` must not be empty. Received: fetches={!r}".format(fetches))
    return run + ([report] if report is not None else []), report


def in_graph_batch(tensors, feed_dict=None):
    """The ops behind ``tensors`` that read a batch inside the graph (an iterator, a queue, a
    reader) and whose outputs ``feed_dict`` does not replace."""
    fed = {getattr(key, "name", key) for key in (feed_dict or {})}
    found, seen, stack = [], set(), [t.op for t in tensors]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type in INPUT_OP_TYPES:
            if not all(t.name in fed for t in op.outputs):
                found.append(op)
            continue
        stack.extend(t.op for t in op.inputs if t.name not in fed)
        stack.extend(op.control_inputs)
    return found


def _frames(op):
    frames = []
    for frame in getattr(op, "traceback", None) or ():
        filename = getattr(frame, "filename", None)
        lineno = getattr(frame, "lineno", None)
        if filename is None:
            filename, lineno = frame[0], frame[1]
        frames.append((filename, lineno))
    return frames


# Where a lowered TF2 cond/loop puts its branches' nodes: <op>/<part>/_<n>/<node in the branch>.
_BRANCHES = {"then": "then_branch", "else": "else_branch", "body": "body", "cond": "cond"}


def _python_op(graph, node_name):
    """The graph op of a dumped node. A Session runs TF2's ``tf.cond``/``while_loop`` lowered, as
    nodes named ``cond/then/_0/Log``: that is the op ``Log`` of the cond's ``then_branch``
    function (found in the graph's function library, nested conds too); the enclosing cond/loop
    op if its function cannot be found."""
    parts = node_name.split("/")
    for end in range(len(parts), 0, -1):
        try:
            op = graph.get_operation_by_name("/".join(parts[:end]))
        except (KeyError, ValueError):
            continue
        rest = parts[end:]
        if len(rest) >= 3 and rest[0] in _BRANCHES and re.match(r"^_\d+$", rest[1]):
            inner = _branch_graph(graph, op, _BRANCHES[rest[0]])
            found = _python_op(inner, "/".join(rest[2:])) if inner is not None else None
            if found is not None:
                return found
        return op
    return None


def _branch_graph(graph, op, attribute):
    """The FuncGraph of ``op``'s function attribute (``then_branch``, ``body``...), or None.
    ``Graph._get_function`` is private; present with ``.graph`` from TF 2.4 to 2.21."""
    try:
        function = graph._get_function(op.get_attr(attribute).name)
        return getattr(function, "graph", None)
    except (AttributeError, ValueError, KeyError, TypeError):
        return None


_GRAD_SEGMENT = re.compile(r"^(.*?)_grad$")
_GRADIENTS_SCOPE = re.compile(r"^gradients(_\d+)?$")  # tf.gradients' name scope


def _forward_op(graph, node_name):
    """For a node of ``tf.gradients``'s backward pass (``gradients/cond/Log_grad/Reciprocal``),
    the forward op it differentiates (``cond/Log``); else None."""
    parts = node_name.split("/")
    starts = [i for i, part in enumerate(parts) if _GRADIENTS_SCOPE.match(part)]
    if not starts:
        return None
    for index in range(starts[0] + 1, len(parts)):
        match = _GRAD_SEGMENT.match(parts[index])
        if match:
            return _python_op(graph, "/".join(parts[starts[0] + 1:index] + [match.group(1)]))
    return None


def _value_before(by_tensor, node, slot, timestamp):
    """The last dumped value of ``node:slot`` at or before ``timestamp`` (None if never dumped);
    ``by_tensor``: (node, slot) -> dumps in time order."""
    best = None
    for datum in by_tensor.get((node, slot), ()):
        if datum.timestamp <= timestamp:
            best = datum
    return None if best is None else best.get_tensor()


def _nonfinite_variables(session, graph):
    variables = [v for v in graph.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES)
                 if v.dtype.base_dtype.is_floating and not v.op.name.startswith(STATE_SCOPE)]
    if not variables:
        return []
    try:
        values = session.run(variables)
    except tf.errors.OpError:
        return []
    return [v.op.name for v, value in zip(variables, values) if not np.all(np.isfinite(value))]


def explain_session(session, fetches, feed_dict=None):
    """Replays a failing Session step and reports the first op that produced NaN/Inf.

    Call it after a step was skipped (or raised) with the same session, the train op and the
    feed of that step. TensorFlow dumps every tensor the step computes (inside ``tf.cond`` and
    ``tf.while_loop`` too) to a temporary directory; the first one holding NaN/Inf names the op,
    the line of your code that created it, its inputs and a likely cause. A safegrad train op is
    replayed WITHOUT its update (only the forward and backward pass); a tensor (e.g. the loss)
    is simply recomputed. Costs nothing until called (slow while it runs).

    A step that reads its batch inside the graph (a ``tf.data`` iterator, a queue) cannot be
    replayed as it is, since that would read the next batch: feed the failing batch's values for
    the iterator's outputs (``ExplainHook`` keeps them for you), or get a ValueError saying so.

    Args:
      session: the ``tf.compat.v1.Session`` the step ran in.
      fetches: the train op returned by ``clip_and_apply`` / ``SafeOptimizer.minimize`` /
        ``apply_gradients``, or a tensor / list of tensors to recompute (e.g. the loss).
      feed_dict: the feed of the failing step.

    Returns:
      A ``NonFiniteReport`` (print it), or None if nothing was NaN/Inf this time.

    Raises:
      TypeError: for a session without a graph, or ``fetches`` that is another op (running it
        would apply it again).
      ValueError: for a step that reads its batch inside the graph, without that batch fed.

    Example:
      >>> _, applied = sess.run([train_op, outputs.applied], feed_dict=feed)
      >>> if not applied:
      ...   print(safegrad.explain_session(sess, train_op, feed))
    """
    graph = getattr(session, "graph", None)
    if not isinstance(graph, tf1.Graph) or not callable(getattr(session, "run", None)):
        raise TypeError(
            "`session` must be the tf.compat.v1.Session the step ran in. Received: session={!r}".format(session)
        )
    run, report_tensor = _fetches_to_replay(fetches)
    readers = in_graph_batch(run, feed_dict)
    if readers:
        raise ValueError(
            "The step reads its batch inside the graph ({}): replaying it would read, and use up, "
            "the NEXT batch instead of the failing one. Feed the failing batch's values: "
            "explain_session(sess, train_op, {{tensor: value}}) for the tensors {} (safegrad.ExplainHook "
            "does this by itself).".format(
                ", ".join("{} {!r}".format(op.type, op.name) for op in readers),
                [t.name for op in readers for t in op.outputs],
            )
        )
    with warnings.catch_warnings():  # TF 1.15's tfdbg uses numpy aliases numpy deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _replay(session, graph, run, report_tensor, feed_dict)


def _replay(session, graph, run, report_tensor, feed_dict):
    config_pb2, debug_data, debug_utils = _debug_modules()
    root = tempfile.mkdtemp(prefix="safegrad_explain_")
    try:
        options = config_pb2.RunOptions()
        debug_utils.watch_graph(options, graph, debug_urls="file://" + root)
        gradients_report = ""
        try:
            values = session.run(run, feed_dict=feed_dict, options=options)
            if report_tensor is not None:
                gradients_report = values[-1].decode("utf-8") if isinstance(values[-1], bytes) else str(values[-1])
        except tf.errors.OpError:
            pass  # what ran before the error was dumped
        dump = debug_data.DebugDumpDir(root, validate=False)
        bad = dump.find(debug_data.has_inf_or_nan)
        if not bad:
            return None
        first, node_name, op, op_type, inputs, input_values = _birth(dump, graph, bad)
        forward = _forward_op(graph, node_name)
        source_op = forward if forward is not None else op
        data = []
        for key, value in (feed_dict or {}).items():
            text = nonfinite_locations(getattr(key, "name", str(key)), value)
            if text:
                data.append(text)
        if op_type in DATA_OPS and not data:  # data inside the graph: a constant, an iterator
            text = nonfinite_locations("{}:{}".format(node_name, first.output_slot), first.get_tensor())
            if text:
                data.append(text)
        return NonFiniteReport(
            op_type=op_type,
            op_name=node_name,
            source=user_frame(_frames(source_op)) if source_op is not None else None,
            backward_of=forward.type if forward is not None else None,
            inputs=inputs,
            cause=likely_cause(op_type, [v for v in input_values if v is not None],
                               forward.type if forward is not None else None),
            nonfinite_data=data,
            nonfinite_variables=_nonfinite_variables(session, graph),
            nonfinite_gradients=gradients_report,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _in_gradients_scope(name):
    return any(_GRADIENTS_SCOPE.match(part) for part in name.split("/"))


def _uses_gradients(graph):
    """``uses(op)``: whether ``op`` is, or depends on, an op of a ``tf.gradients`` backward pass
    (e.g. the gradients' norm). Memoised over the graph; loop back edges count as no."""
    memo = {}

    def uses(op):
        stack, visiting = [op], set()
        while stack:
            current = stack[-1]
            if current.name in memo:
                stack.pop()
                continue
            if _in_gradients_scope(current.name):
                memo[current.name] = True
                stack.pop()
                continue
            visiting.add(current.name)
            inputs = [t.op for t in current.inputs] + list(current.control_inputs)
            pending = [i for i in inputs if i.name not in memo and i.name not in visiting]
            if pending:
                stack.extend(pending)
                continue
            memo[current.name] = any(memo.get(i.name, False) for i in inputs)
            visiting.discard(current.name)
            stack.pop()
        return memo[op.name]

    return uses


def _birth(dump, graph, bad):
    """The op where the NaN/Inf was born: among the dumped non-finite tensors, those whose inputs
    were all finite; a forward-pass op before one of the backward pass or using its gradients (a
    gradient op may run before the forward op it mirrors when it does not need its output), then
    the earliest."""
    uses_gradients = _uses_gradients(graph)
    candidates = []
    by_tensor = {}
    for datum in dump.dumped_tensor_data:
        by_tensor.setdefault((datum.node_name, datum.output_slot), []).append(datum)
    for datum in bad:
        # A fed placeholder runs as an "_Arg" node named _arg_<placeholder>_<i>_<j>.
        fed = re.match(r"^_arg_(.+)_\d+_\d+$", datum.node_name)
        node_name = fed.group(1) if fed else datum.node_name
        op = _python_op(graph, node_name)
        op_type = "Placeholder" if fed else _op_type(dump, datum.node_name, op)
        inputs, values = [], []
        for input_name in _input_names(dump, datum.node_name, op):
            node, _, slot = input_name.partition(":")
            value = _value_before(by_tensor, node.lstrip("^"), int(slot or 0), datum.timestamp)
            values.append(value)
            inputs.append((input_name, describe_array(value) if value is not None else "not dumped"))
        born = all(v is None or is_finite_array(v) for v in values)
        backward = _in_gradients_scope(node_name) or (op is not None and uses_gradients(op))
        candidates.append(((not born, backward, datum.timestamp), (datum, node_name, op, op_type, inputs, values)))
        if born and not backward:
            break  # the earliest forward birth: nothing later can come first
    return min(candidates, key=lambda c: c[0])[1]


def _op_type(dump, node_name, op):
    try:
        return dump.node_op_type(node_name)
    except Exception:  # tfdbg raises bare LookupError/ValueError without partition graphs
        return op.type if op is not None else "?"


def _input_names(dump, node_name, op):
    try:
        return list(dump.node_inputs(node_name))
    except Exception:  # no partition graphs: the Python op's inputs (same names in v1 graphs)
        return [t.name for t in op.inputs] if op is not None and op.name == node_name else []
