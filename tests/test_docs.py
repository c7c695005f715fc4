"""The documentation and the code say the same thing."""

from __future__ import annotations

import errno
import re

import pytest

from protocols import COMMON_ERRORS, SPECS, Op, Role, errno_name
from xed.ioctl import HANDLERS

_ERRNO = re.compile(r"\bE[A-Z0-9]{2,}\b")


def _doc_errnos(op: Op) -> set[str]:
    doc = HANDLERS[op].__doc__ or ""
    return {name for name in _ERRNO.findall(doc) if hasattr(errno, name)}


@pytest.mark.parametrize("op", sorted(HANDLERS, key=int), ids=lambda op: op.name)
def test_handler_docstring_errnos_match_op_table(op: Op) -> None:
    """Every errno a handler documents is in the op table (and the reference), and back."""
    table = {errno_name(number) for number, _ in SPECS[op].errors}
    assert _doc_errnos(op) == table


def test_every_connection_op_but_hello_has_a_handler() -> None:
    """The dispatch table covers every op a daemon connection may send (HELLO is the
    server's own; peer ops are answered by the exported object they are spoken on, and
    verbs by the IB-like aux driver)."""
    elsewhere = {op for op, spec in SPECS.items() if spec.roles <= {Role.PEER, Role.VERBS}}
    assert set(HANDLERS) | {Op.HELLO} == set(SPECS) - elsewhere


def test_common_errors_are_protocol_level() -> None:
    """The errors every op may answer with are the codec's, the handshake's, unplug's
    and the daemon's own exhaustion (out of memory or descriptors)."""
    assert {errno_name(n) for n, _ in COMMON_ERRORS} == {
        "ENODEV",
        "EPROTO",
        "ENOTTY",
        "EACCES",
        "EINVAL",
        "EMSGSIZE",
        "ENOMEM",
        "EMFILE",
    }
