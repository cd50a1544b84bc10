"""Reading the engine's settings from environment variables: one rule for what a boolean is,
one for what a number is."""

from __future__ import annotations

from typing import Callable, Mapping, TypeVar, overload

from .errors import InvalidArgument

__all__ = ["env_flag", "env_number"]

N = TypeVar("N", int, float)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(env: Mapping[str, str], name: str, default: bool, *,
             error: type[Exception] = InvalidArgument) -> bool:
    """The boolean in ``env[name]``: 1/true/yes/on or 0/false/no/off, any case; ``default``
    when the variable is unset or blank.

    Raises:
        error (InvalidArgument unless the caller names its own configuration error): any other
            value (the message names the variable, not the value).
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise error(f"{name} must be true or false (1/0, yes/no, on/off)")


@overload
def env_number(env: Mapping[str, str], name: str, kind: Callable[[str], N], default: N, *,
               error: type[Exception] = ...) -> N: ...
@overload
def env_number(env: Mapping[str, str], name: str, kind: Callable[[str], N], default: None = None,
               *, error: type[Exception] = ...) -> N | None: ...
def env_number(env: Mapping[str, str], name: str, kind: Callable[[str], N],
               default: N | None = None, *,
               error: type[Exception] = InvalidArgument) -> N | None:
    """``kind(env[name])`` (``int`` or ``float``); ``default`` when the variable is unset or
    blank.

    Raises:
        error (InvalidArgument unless the caller names its own configuration error): a value
            ``kind`` does not read (the message names the variable and the kind, not the value).
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        pass
    what = "an integer" if kind is int else "a number"
    raise error(f"{name} must be {what}")
