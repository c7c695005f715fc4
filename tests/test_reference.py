"""protocols/REFERENCE.md is generated from the op table and must be current."""

from __future__ import annotations

from pathlib import Path

import pytest

import protocols
from protocols import EVENTS, SPECS, Event, Op, reference

CHECKED_IN = Path(protocols.__file__).with_name("REFERENCE.md")


def test_checked_in_reference_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m protocols.reference` prints exactly the checked-in REFERENCE.md."""
    reference.main()
    generated = capsys.readouterr().out
    assert generated == CHECKED_IN.read_text(encoding="utf-8"), (
        "protocols/REFERENCE.md is stale: run `make reference` and commit the result"
    )


def test_every_op_and_event_has_a_spec_and_a_section() -> None:
    """Every Op has a SPECS entry and every Op and Event a section in the reference."""
    assert set(SPECS) == set(Op)
    assert set(EVENTS) == set(Event)
    text = reference.render()
    for op in Op:
        assert f"### {op.name} (0x{op.value:02x})\n" in text, op.name
    for event in Event:
        assert f"### {event.name} ({event.value})\n" in text, event.name


def test_an_op_in_two_tables_is_refused() -> None:
    """The op table is assembled from one module per family: an op listed twice stops
    the import instead of one entry silently replacing the other."""
    from protocols.ops import _index, admin

    assert _index(admin.SPECS) == {spec.op: spec for spec in admin.SPECS}
    with pytest.raises(ValueError, match="ADMIN_STATUS is in the op table twice"):
        _index(admin.SPECS, admin.SPECS[:1])


def test_render_is_deterministic() -> None:
    """Rendering twice gives the same text."""
    assert reference.render() == reference.render()
