"""The argument rules: what every parameter of the network, the optimiser and a run may be.

Each rule says in words what a value must be and tests it; `check(name, value, rule)` returns the
value as a plain Python value (numpy numbers become Python numbers) or raises a ValueError that
names the parameter, the rule and the value: "learning_rate must be a finite number > 0, got -1".
RunConfig's table of rules (mlp_train.RunConfig.RULES) and the checks of MLP and SGD use these,
as scikit-learn's `_parameter_constraints` tables do. Nothing here knows about the network itself.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class Rule:
    """A value of `kind` (int, float, bool or str; numpy numbers too, never a bool for a number)
    for which `holds` is true; `words` say what it must be."""

    kind: type
    words: str
    holds: Callable[[Any], bool] = lambda v: True

    def __call__(self, name: str, value):
        return check(name, value, self)


def _is_kind(value, kind: type) -> bool:
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is bool:
        return is_bool
    if kind is int:
        return isinstance(value, (int, np.integer)) and not is_bool
    if kind is float:
        return isinstance(value, numbers.Real) and not is_bool
    return isinstance(value, kind)


def check(name: str, value, rule: Rule):
    """`value` as a plain `rule.kind` if it is one and the rule holds; ValueError otherwise."""
    if not _is_kind(value, rule.kind) or not rule.holds(rule.kind(value)):
        raise ValueError(f"{name} must be {rule.words}, got {value!r}")
    return rule.kind(value)


def at_least(least: int) -> Rule:
    """An integer >= least."""
    return Rule(int, f"an integer >= {least}", lambda v: v >= least)


def between(least: int, most: int) -> Rule:
    """An integer in [least, most]."""
    return Rule(int, f"an integer >= {least} and <= {most}", lambda v: least <= v <= most)


POSITIVE_INT = at_least(1)
POSITIVE_REAL = Rule(float, "a finite number > 0", lambda v: 0 < v < math.inf)
FRACTION = Rule(float, "in [0, 1)", lambda v: 0 <= v < 1)
FLAG = Rule(bool, "True or False")
TEXT = Rule(str, "a string")
DTYPES = ("float32", "float64")


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """One of the strings `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_dtype(dtype) -> np.dtype:
    """float32 or float64, given by name or as a numpy dtype or type."""
    name = str(dtype)
    if not isinstance(dtype, str):
        with contextlib.suppress(TypeError):
            name = np.dtype(dtype).name
    return np.dtype(check_choice("dtype", name, DTYPES))


def check_layer_sizes(layer_sizes, outputs: int) -> tuple[int, ...]:
    """The widths of every layer after the input as positive integers, `outputs` last."""
    if isinstance(layer_sizes, np.ndarray) and layer_sizes.ndim != 1:
        sizes = ()  # a table of sizes is not a list of them
    else:
        sizes = tuple(layer_sizes) if isinstance(layer_sizes, Iterable) else ()
    positive = all(_is_kind(s, int) and s > 0 for s in sizes)
    if not sizes or not positive or sizes[-1] != outputs:
        raise ValueError(
            f"layer_sizes must list positive integers, the hidden layers' widths and then the "
            f"{outputs} outputs, e.g. [64, {outputs}] or [60, 60, {outputs}]; got {layer_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """n integer class labels in [0, num_classes)."""
    labels = np.asarray(labels)
    is_int = np.issubdtype(labels.dtype, np.integer)
    in_range = n == 0 or (is_int and 0 <= labels.min() <= labels.max() < num_classes)
    if labels.shape != (n,) or not is_int or not in_range:
        found = f" from {labels.min()} to {labels.max()}" if labels.size else ""
        raise ValueError(
            f"labels must be {n} integers in [0, {num_classes - 1}], "
            f"got {labels.dtype} {labels.shape}{found}"
        )
    return labels


def check_inputs(X, input_size: int, dtype: np.dtype) -> np.ndarray:
    """A floating-point batch (N, input_size), returned as `dtype`."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != input_size or X.dtype.kind != "f":
        raise ValueError(
            f"X must be a floating-point array of shape (N, {input_size}) (normalised pixels "
            f"plus the bias column: see prepare_data), got {X.dtype} {X.shape}"
        )
    return X.astype(dtype, copy=False)
