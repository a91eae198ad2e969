"""Turning failures inside trio nurseries back into one-line user errors."""

from __future__ import annotations


def first_oserror(exc: BaseException) -> OSError | None:
    """The first OSError in *exc*, looking inside (nested) exception groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_oserror(inner)
            if found is not None:
                return found
    return None
