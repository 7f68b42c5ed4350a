"""Quoting bad input in an error message without reproducing it whole.

A YAML file of aliases can load as a value whose ``repr`` runs to gigabytes; an error message names the
input and shows a few levels and characters of it, never the expansion.
"""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 80, 80, 40


def short_repr(value: object) -> str:
    """``repr`` cut to a few levels and characters."""
    return _SHORT.repr(value)


class InputError(ValueError):
    """Bad input: its message is one sentence that names the input (file, flag, URL) and what is wrong.

    Command-line entry points print it as it is and exit 2, never with a traceback.
    """
