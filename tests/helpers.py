"""Helpers several test files share."""

from __future__ import annotations

from typing import Any

import pytest

from clients import XeError


def errno_of(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno a refused call raised (fails the test if it succeeded)."""
    with pytest.raises(XeError) as info:
        call(*args, **kwargs)
    assert info.value.errno is not None
    return info.value.errno
