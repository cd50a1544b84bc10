"""Counting refused inputs: every error a public call of the engine raises is counted once in
``engine_encryption_errors_total{error_type}``, by a kind from the fixed set :data:`engine.errors.ERROR_TYPES`
(a label value never comes from the input).

The public entry points of the service, fields, tables and engine files are decorated with
:func:`counts_refusals`; an error is marked when counted, so one that passes through several of
them on its way out (a field call that ends in a service call) is counted once. Apart from
:mod:`engine.metrics` so that the service imports it without prometheus_client.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, TypeVar

from .errors import ERROR_TYPES, EngineError, InvalidArgument, InvalidArgumentType, InvalidTag
from .formats.wire import EnvelopeError
from .keys.base import KeyProviderError, KeyUsageExhausted, KeyVersionNotUsable, UnknownKeyVersion

__all__ = ["count_refusal", "counted", "counts_refusals", "error_type_of",
           "metrics_of_service", "restated"]

Kinds = Iterable[tuple[type[BaseException], str]]

# In this order: the first class an error is an instance of gives its kind.
_ERROR_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidTag, "invalid_tag"),
    (UnknownKeyVersion, "unknown_key_version"),
    (EnvelopeError, "malformed"),
    (KeyUsageExhausted, "key_usage_exhausted"),
    (KeyVersionNotUsable, "key_version_not_usable"),
    (KeyProviderError, "key_provider"),
    (InvalidArgument, "invalid_argument"),
    (InvalidArgumentType, "invalid_argument"),
    (EngineError, "other"),
    (ValueError, "invalid_argument"),
    (TypeError, "invalid_argument"),
)
_COUNTED = "_engine_refusal_counted"


def error_type_of(exc: BaseException, kinds: Kinds = ()) -> str | None:
    """The ``error_type`` an error is counted under, or None for one that is not a refusal
    (an ``OSError``, a ``KeyboardInterrupt``).

    Args:
        kinds: ``(class, error_type)`` pairs of a layer above this module, checked first.
    """
    for cls, kind in (*kinds, *_ERROR_CLASSES):
        if isinstance(exc, cls):
            return kind if kind in ERROR_TYPES else "other"
    return None


def count_refusal(metrics: Any, exc: BaseException, kinds: Kinds = ()) -> None:
    """Counts a refused input once into ``metrics`` (an :class:`engine.metrics.EngineMetrics`,
    or None when counting is off), however many public calls it passes on its way out:
    ``len(exc.failed)`` for a :class:`~engine.BatchInvalidTag` (one per record), else 1.

    Never raises: counting must not replace the error the caller is about to see.
    """
    try:
        kind = error_type_of(exc, kinds)
        if kind is None or getattr(exc, _COUNTED, False):
            return
        setattr(exc, _COUNTED, True)
        if metrics is not None:
            failed = getattr(exc, "failed", None)
            metrics.error(kind, len(failed) if failed is not None else 1)
    except Exception:  # noqa: BLE001, S110 - the caller's error matters more than its count
        pass


_E = TypeVar("_E", bound=BaseException)


def counted(exc: _E) -> _E:
    """``exc``, marked as counted: for a new error that restates one a public call counted
    already. (Chains are not followed: a caller that tries another value while handling a
    refusal makes a second refusal.)"""
    setattr(exc, _COUNTED, True)
    return exc


def restated(new: _E, old: BaseException) -> _E:
    """``new``, an error that restates ``old`` (naming the column or file it came from), marked
    as counted exactly when ``old`` was: the refusal is counted once either way."""
    if getattr(old, _COUNTED, False):
        setattr(new, _COUNTED, True)
    return new


_F = TypeVar("_F", bound=Callable[..., Any])


def counts_refusals(metrics_of: Callable[..., Any], *, kinds: Kinds = ()) -> Callable[[_F], _F]:
    """Decorates a public entry point: an error it raises is counted by :func:`count_refusal`
    into ``metrics_of(*args, **kwargs)`` (called only on failure), then raised unchanged.

    Args:
        metrics_of: the metrics of the call (its service's), or None when counting is off.
        kinds: error classes of the caller's layer that this module cannot import.
    """
    kinds = tuple(kinds)

    def decorate(func: _F) -> _F:
        @functools.wraps(func)
        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                try:
                    metrics = metrics_of(*args, **kwargs)
                except Exception:  # noqa: BLE001 - e.g. a call that names no usable service
                    metrics = None
                count_refusal(metrics, exc, kinds)
                raise

        return counted  # type: ignore[return-value]

    return decorate


def metrics_of_service(service: Any) -> Any:
    """The metrics a call counts into: its service's (None when its counting is off), or the
    process-wide ones, which the process-wide service uses, when the call names no service."""
    if service is not None:
        return service.metrics
    from .metrics import get_metrics

    return get_metrics()
