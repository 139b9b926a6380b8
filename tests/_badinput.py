"""Shared runner of the table-driven bad-input tests (tests/test_badinput_<module>.py).

A case is ``(id, thunk, expected exception type(s), argument name)``: calling
``thunk()`` must raise the exception with a message whose first word, before
the colon, is the public argument's name, and nothing may be silently
accepted.
"""

from __future__ import annotations

import re

import pytest


def params(cases):
    """``pytest.mark.parametrize`` arguments with readable ids."""
    return pytest.mark.parametrize("thunk, exc, arg", [c[1:] for c in cases], ids=[c[0] for c in cases])


def check(thunk, exc, arg):
    """``thunk()`` raises ``exc`` and the message starts with ``arg:``."""
    with pytest.raises(exc) as info:
        thunk()
    msg = str(info.value)
    head = re.sub(r"\[\d+\]$", "", msg.split(":", 1)[0].strip())  # train_data[0] names train_data
    assert head == arg, f"expected the message to start with {arg!r}: {msg}"
    assert "\n" not in msg.strip() or len(msg) < 2000, msg


def unique_ids(cases):
    ids = [c[0] for c in cases]
    return len(ids) == len(set(ids))
