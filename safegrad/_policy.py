"""The policy of a safe step: what to clip, and what a non-finite gradient does.

``StepPolicy`` is the one definition of the policy arguments. Public signatures
(``clip_and_apply``, ``SafeOptimizer``) spell them out for users and IDEs and hand all of their
arguments to ``StepPolicy.from_arguments(locals())``, which takes the policy's by name; everything
inside safegrad passes the validated ``StepPolicy``.
``tests/test_public_api.py`` checks that every public signature lists exactly
``StepPolicy._fields``, in order, with these defaults: a new option is added here, in
``create``, and in the public signatures.
"""

import collections

from safegrad import _validate

_DEFAULTS = collections.OrderedDict(
    [
        ("clip_norm", None),
        ("per_variable_clip_norm", None),
        ("clip_value", None),
        ("on_nonfinite", "raise"),
        ("max_consecutive_skips", None),
        ("tf_compatible_norm", False),
    ]
)


class StepPolicy(collections.namedtuple("StepPolicy", list(_DEFAULTS))):
    """The validated clipping and non-finite policy of a step (see ``clip_and_apply``)."""

    __slots__ = ()
    DEFAULTS = _DEFAULTS

    @classmethod
    def from_arguments(cls, arguments):
        """``create`` from the policy entries of a public function's ``locals()``."""
        return cls.create(**{name: arguments[name] for name in cls._fields})

    @classmethod
    def create(
        cls,
        clip_norm=None,
        per_variable_clip_norm=None,
        clip_value=None,
        on_nonfinite="raise",
        max_consecutive_skips=None,
        tf_compatible_norm=False,
    ):
        """Validates the arguments (ValueError/TypeError naming the argument and echoing it)."""
        on_nonfinite = _validate.on_nonfinite(on_nonfinite)
        _validate.clip_value_bounds(clip_value)
        return cls(
            clip_norm=_validate.positive_scalar(clip_norm, "clip_norm"),
            per_variable_clip_norm=_validate.positive_scalar(
                per_variable_clip_norm, "per_variable_clip_norm"
            ),
            clip_value=tuple(clip_value) if isinstance(clip_value, list) else clip_value,
            on_nonfinite=on_nonfinite,
            max_consecutive_skips=_validate.max_consecutive_skips(max_consecutive_skips, on_nonfinite),
            tf_compatible_norm=_validate.flag(tf_compatible_norm, "tf_compatible_norm"),
        )
