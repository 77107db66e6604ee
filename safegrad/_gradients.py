"""Obtaining gradients of a loss in every mode: a recorded tape, a callable, a graph tensor.

The same for every optimizer API (a v1 optimizer's own ``compute_gradients`` is used instead
where it matters; see ``_adapters.V1OptimizerAdapter``).
"""

from safegrad._tf import building_v1_graph, tf, tf1
from safegrad._variables import trainable_variables_in_graph


def gradients_of(loss, var_list, tape, options=None):
    """(gradient, variable) pairs of ``loss``, as each mode expects.

    * ``tape`` given: ``tape.gradient`` (TF2 eager / tf.function with a recorded loss tensor).
    * a callable loss in a TF1-style graph: called, then as a loss tensor (``tf.gradients``
      handles ref variables, which a GradientTape cannot watch).
    * a callable loss otherwise: a GradientTape around it (a callable ``var_list`` is read after
      the loss ran, v1 semantics: a Keras model may create its weights on that call).
    * a loss tensor in a graph: ``tf.gradients``; default variables: the trainable ones.

    ``options``: the validated gradient options given (``gate_gradients``, ``aggregation_method``,
    ``colocate_gradients_with_ops``, ``grad_loss``); only ``grad_loss`` reaches a tape.
    """
    options = options or {}
    loss = called_in_v1_graph(loss)
    grad_loss = options.get("grad_loss")
    if tape is not None:
        variables = resolve_var_list(var_list)
        if variables is None:
            variables = list(tape.watched_variables())
        return list(zip(tape.gradient(loss, variables, output_gradients=grad_loss), variables))
    if callable(loss):
        explicit = None if callable(var_list) else resolve_var_list(var_list)
        with tf.GradientTape() as recorded:
            for variable in explicit or ():
                if isinstance(variable, tf.Variable):
                    recorded.watch(variable)
            loss_value = loss()
        variables = explicit if explicit is not None else resolve_var_list(var_list)
        if variables is None:
            variables = list(recorded.watched_variables())
        return list(zip(recorded.gradient(loss_value, variables, output_gradients=grad_loss), variables))
    variables = resolve_var_list(var_list)
    if variables is None:
        variables = trainable_variables_in_graph()
    if not variables:
        raise ValueError("No variables to optimize: pass `var_list`. Received: var_list=None")
    return list(zip(_graph_gradients(loss, variables, options), variables))


def called_in_v1_graph(loss):
    """A callable loss called now when building a TF1-style graph (there it is just deferred
    graph code), else ``loss`` unchanged."""
    if callable(loss) and not isinstance(loss, (tf.Tensor, tf.Variable)) and building_v1_graph():
        return loss()
    return loss


def _graph_gradients(loss, variables, options):
    """``tf.gradients`` with the options of ``Optimizer.compute_gradients`` (same semantics)."""
    if not options:
        return tf.gradients(loss, variables)
    gate = options.get("gate_gradients", tf1.train.Optimizer.GATE_OP)
    grads = tf1.gradients(
        loss, variables, grad_ys=options.get("grad_loss"),
        gate_gradients=gate == tf1.train.Optimizer.GATE_OP,
        aggregation_method=options.get("aggregation_method"),
        colocate_gradients_with_ops=options.get("colocate_gradients_with_ops", False),
    )
    if gate == tf1.train.Optimizer.GATE_GRAPH:
        grads = tf1.tuple(grads)
    return grads


def resolve_var_list(var_list):
    """``var_list`` as a list (calling it if it is a callable), or None."""
    if var_list is None:
        return None
    if callable(var_list):
        var_list = var_list()
    return list(var_list)
