"""Which Keras is installed, and the few places where its generations spell things differently.

Keras behind ``tf.keras`` is Keras 2 bundled with TF 2.0-2.15, tf-keras (TF >= 2.16 with
``TF_USE_LEGACY_KERAS=1``) or Keras 3 (TF >= 2.16). Each function below is decided by feature
detection and names the versions that need it. Nothing here imports Keras at import time: under
TF >= 2.16 touching ``tf.keras`` loads Keras 3, which costs seconds, and a TF1 user of safegrad
never needs it; ``when_keras_is_imported`` runs code once Keras is there.
"""

import importlib.abc
import inspect
import sys
import warnings

from safegrad._tf import TF_VERSION, tf_root


def keras():
    """The Keras behind ``tf.keras`` (Keras 2, Keras 3, or tf-keras with TF_USE_LEGACY_KERAS)."""
    return tf_root.keras


def keras_major_version():
    """3 for Keras 3 (only it has ``keras.version()``), else 2."""
    return 3 if callable(getattr(keras(), "version", None)) else 2


def optimizer_base_classes():
    """[(base class, public module)] of the installed Keras's optimizer APIs that safegrad wraps.

    TF 2.0-2.10: ``tf.keras.optimizers.Optimizer`` (OptimizerV2). Keras 2.11-2.15 and tf-keras: the
    new ``Optimizer`` and ``optimizers.legacy.Optimizer`` (OptimizerV2). Keras 3: ``Optimizer``
    (its ``optimizers.legacy`` exists but raises on use, so it is read only under Keras 2).
    TF 1.x: none (its Keras 2.2 OptimizerV2 is not supported).
    """
    if TF_VERSION < (2, 0):
        return []
    optimizers = keras().optimizers
    found = [(optimizers.Optimizer, "tf.keras.optimizers")]
    legacy = getattr(optimizers, "legacy", None) if keras_major_version() == 2 else None
    base = getattr(legacy, "Optimizer", None)
    # Keras 2.11-2.15, tf-keras: a second, unrelated hierarchy. (TF 2.10's `legacy.Optimizer`
    # subclasses its OptimizerV2 `Optimizer`: the same API under another name.)
    if base is not None and not issubclass(base, optimizers.Optimizer):
        found.append((base, "tf.keras.optimizers.legacy"))
    return found


def is_unsupported_keras_optimizer(optimizer):
    """True for the Keras 2.2 ``OptimizerV2`` bundled with TF 1.x (``tf.keras.optimizers`` there),
    which safegrad does not wrap: it lacks the slot-creation and aggregation API of TF 2.x."""
    if TF_VERSION >= (2, 0):
        return False
    return any(
        cls.__name__ == "OptimizerV2" and cls.__module__.startswith("tensorflow")
        for cls in type(optimizer).__mro__
    )


def optimizer_base(optimizer_class):
    """The Keras optimizer API base class of ``optimizer_class`` (itself included), e.g. what a
    wrapper of its instances must subclass.

    Found in the class's own MRO, so it is right for TF 2.4's bundled Keras (``OptimizerV2``),
    Keras 2.11-2.15 and tf-keras (``Optimizer`` or ``legacy``/``OptimizerV2``) and Keras 3.
    """
    for cls in optimizer_class.__mro__:
        if cls.__name__ in ("Optimizer", "OptimizerV2") and cls.__module__.split(".")[0] in (
            "keras", "tf_keras", "tensorflow"
        ):
            return cls
    raise TypeError("not a Keras optimizer class: {!r}".format(optimizer_class))


def loss_scale_optimizer_classes():
    """The installed Keras's LossScaleOptimizer classes. Keras 3 and TF 2.4-2.10: the public
    ``mixed_precision.LossScaleOptimizer`` (``optimizers.`` in Keras 3). Keras 2.11-2.15 and
    tf-keras: the public name is a factory (a metaclass) making ``LossScaleOptimizer`` (for
    OptimizerV2) or ``LossScaleOptimizerV3``, both in its module. TF 1.x: none."""
    if TF_VERSION < (2, 0):
        return []
    public = getattr(keras().optimizers, "LossScaleOptimizer", None)
    public = public or getattr(getattr(keras(), "mixed_precision", None), "LossScaleOptimizer", None)
    if public is None:
        return []
    module = sys.modules.get(public.__module__)
    found = [getattr(module, name, None) for name in ("LossScaleOptimizer", "LossScaleOptimizerV3")] + [public]
    classes = []
    for cls in found:
        if isinstance(cls, type) and callable(getattr(cls, "apply_gradients", None)) and cls not in classes:
            try:
                optimizer_base(cls)
            except TypeError:  # the 2.11+ factory, not an optimizer class
                continue
            classes.append(cls)
    return classes


def delegating_trackable_mixin():
    """The mixin that makes a wrapper look like the optimizer it wraps to checkpoints.

    Public as ``tf.__internal__.tracking.DelegatingTrackableMixin`` from TF 2.6; TF 2.4-2.5 only
    have Keras's private copy in its LossScaleOptimizer module.
    """
    tracking = getattr(getattr(tf_root, "__internal__", None), "tracking", None)
    mixin = getattr(tracking, "DelegatingTrackableMixin", None)
    if mixin is None:  # TF 2.4-2.5
        from tensorflow.python.keras.mixed_precision import loss_scale_optimizer

        mixin = loss_scale_optimizer._DelegatingTrackableMixin
    return mixin


def no_automatic_dependency_tracking(method):
    """Stops AutoTrackable from tracking attributes set in ``method`` (Keras 2.11+ optimizers).

    Public as ``tf.__internal__.tracking.no_automatic_dependency_tracking`` from TF 2.6.
    """
    tracking = getattr(getattr(tf_root, "__internal__", None), "tracking", None)
    decorator = getattr(tracking, "no_automatic_dependency_tracking", None)
    if decorator is None:  # TF 2.4-2.5
        from tensorflow.python.training.tracking import base

        decorator = base.no_automatic_dependency_tracking
    return decorator(method)


def serialize_optimizer(optimizer):
    return keras().optimizers.serialize(optimizer)


def deserialize_optimizer(config, custom_objects=None, legacy=False):
    """``keras.optimizers.deserialize``; ``legacy`` selects OptimizerV2 classes where Keras
    2.11-2.15 / tf-keras have both generations (their ``use_legacy_optimizer``)."""
    deserialize = keras().optimizers.deserialize
    parameters = inspect.signature(deserialize).parameters
    if "use_legacy_optimizer" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):  # Keras 2.10-2.15, tf-keras
        return deserialize(config, custom_objects=custom_objects, use_legacy_optimizer=legacy)
    return deserialize(config, custom_objects=custom_objects)  # TF 2.4, Keras 3


def register_serializable(cls, name):
    """Registers ``cls`` as ``safegrad>name``, so saved models load without custom_objects."""
    return keras().utils.register_keras_serializable(package="safegrad", name=name)(cls)


_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.python.keras")
_keras_hooks = []


def when_keras_is_imported(callback):
    """Runs ``callback`` once Keras is imported: now if it already is, else right after.

    Loading a model must find safegrad's optimizer classes registered with Keras without paying
    for a Keras import in ``import safegrad`` (TF1 and non-Keras users never need it). TF 2.10+
    imports Keras with TensorFlow anyway; otherwise a one-shot import hook fires after
    ``keras``/``tf_keras`` finishes importing. TF 1.x: nothing to register.
    """
    if TF_VERSION < (2, 0):
        return
    if any(name in sys.modules for name in _KERAS_MODULES):
        _run_keras_callback(callback)
        return
    _keras_hooks.append(callback)
    if not any(isinstance(finder, KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, KerasImportHook())


def _run_keras_callback(callback):
    try:
        callback()
    except Exception as error:  # never break the user's Keras import
        warnings.warn("safegrad could not register its Keras classes: {!r}".format(error), stacklevel=2)


class KerasImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``keras``/``tf_keras`` to run the callbacks
    queued by ``when_keras_is_imported`` after the package executed, then removes itself."""

    pending = _keras_hooks

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


_CALLBACK_CLASSES = {}


def callback_class(make):
    """``make(Callback)`` with the installed Keras's ``keras.callbacks.Callback``, built once (on
    first use, so that ``import safegrad`` never imports Keras) and cached: safegrad's callbacks."""
    if make not in _CALLBACK_CLASSES:
        _CALLBACK_CLASSES[make] = make(keras().callbacks.Callback)
    return _CALLBACK_CLASSES[make]
