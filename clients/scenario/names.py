"""The names each process holds, step by step, worked out before anything runs.

A worker keeps what its steps make in tables by name (BOs, VMs, descriptors, mappings,
MMIO regions, host memory, memory regions, queue pairs) and every number it holds as a
value (vocabulary.py: USES, defines). A step that looks up a name no earlier step of
that process made or received would fail at run time with "holds nothing named";
here it is a problem of the file, with its place and the closest name it does hold.

What a `recv` brings is what the peer's `send` steps to this process name (in any
order: a send may come after the recv in the file and still be what it receives). A
step that expects an errno makes nothing. A step the checks already refused is not
looked at for its uses, but is assumed to make what it names, so one mistake is
reported once rather than again at every later use.
"""

from __future__ import annotations

from typing import Any

from .model import ProcessSpec, Scenario, Step, fill
from .vocabulary import (
    OWN_VALUES,
    REQUIRED,
    STEPS,
    SUCCESS,
    TABLE_NAMES,
    USES,
    defines,
    did_you_mean,
)

Held = dict[str, set[str]]
# what one process sends another: (descriptor names, value names), over all its sends
Sent = dict[tuple[str, str], tuple[set[str], set[str]]]
_IB_STEPS = ("reg_mr", "qp")


def _filled(step: Step, context: dict[str, Any]) -> dict[str, Any] | None:
    """The step's fields with placeholders filled; None if that cannot be done (the
    checks refused the step already)."""

    def one(value: Any) -> Any:
        if value is REQUIRED:
            raise ValueError("missing")
        if isinstance(value, str):
            return fill(value, context)
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    try:
        return {key: one(value) for key, value in step.args.items()}
    except (KeyError, ValueError, IndexError, AttributeError):
        return None


def _peer(scenario: Scenario, spec: ProcessSpec, i: int, ref: Any) -> str | None:
    try:
        return scenario.peer(spec, i, fill(ref, spec.context(i)))
    except (ValueError, KeyError, AttributeError):
        return None  # reported by the cross check


def _sent(scenario: Scenario) -> Sent:
    sent: Sent = {}
    for spec, i in scenario.instances():
        for step in spec.steps:
            a = _filled(step, spec.context(i)) if step.do == "send" and step.valid else None
            to = _peer(scenario, spec, i, step.args["to"]) if a is not None else None
            if a is None or to is None:
                continue
            fds, values = sent.setdefault((spec.label(i), to), (set(), set()))
            fds.update(a["fd"])
            values.update(a["value"])
    return sent


def check(scenario: Scenario, problems: list[str]) -> None:
    """Append a problem for every use of a name the process cannot hold by then (one
    per step and field, from the first instance where it shows)."""
    sent = _sent(scenario)
    reported: set[tuple[str, int, str]] = set()
    for spec, i in scenario.instances():
        for index, field, text in _check_instance(scenario, spec, i, sent):
            if (spec.name, index, field) not in reported:
                reported.add((spec.name, index, field))
                problems.append(f"process {spec.label(i)!r}, {text}")


def _check_instance(
    scenario: Scenario, spec: ProcessSpec, i: int, sent: Sent
) -> list[tuple[int, str, str]]:
    held: Held = {table: set() for table in TABLE_NAMES}
    held["value"].update(OWN_VALUES)
    found: list[tuple[int, str, str]] = []
    ib_open = fenced_exec = False
    for step in spec.steps:
        a = _filled(step, spec.context(i))
        if a is None:
            continue
        place = step.describe()
        if step.valid:
            for field, table in USES.get(step.do, {}).items():
                for name in a[field] if isinstance(a[field], list) else [a[field]]:
                    problem = _lookup(step.do, field, table, name, held)
                    if problem:
                        found.append((step.index, field, f"{place}: {problem}"))
            if step.do in _IB_STEPS and not ib_open:
                found.append((step.index, "", f"{place}: no ib_open step before it"))
            if step.do == "wait" and not fenced_exec:
                found.append((step.index, "", f"{place}: no exec with a fence before it"))
        if step.expect != SUCCESS:
            continue
        try:
            made = defines(step.do, a)
        except (KeyError, TypeError):  # a refused step missing what it would name
            made = []
        for table, name in made:
            held[table].add(str(name))
        ib_open = ib_open or step.do == "ib_open"
        fenced_exec = fenced_exec or (step.do == "exec" and a.get("fence") is not None)
        if step.do == "recv":
            _receive(scenario, spec, i, a, sent, held)
    return found


def _lookup(do: str, field: str, table: str, name: Any, held: Held) -> str:
    """What is wrong with looking `name` up, or ''."""
    if name is None or isinstance(name, int):
        return ""  # a default that names nothing, or a plain number
    kind = STEPS[do][field][0]
    if kind == "ref" or table == "value":  # its table, the values, or a number
        if name in held[table] or name in held["value"]:
            return ""
        try:
            int(name, 0)
            return ""
        except ValueError:
            pass
        choices = held[table] | held["value"]
    else:
        if name in held[table]:
            return ""
        choices = held[table]
    what = TABLE_NAMES[table]
    return (
        f"field {field!r}: no earlier step makes or receives a {what} named {name!r}"
        f"{did_you_mean(name, sorted(choices))}"
    )


def _receive(
    scenario: Scenario, spec: ProcessSpec, i: int, a: dict[str, Any], sent: Sent, held: Held
) -> None:
    """What a recv adds: the descriptors and values its peer's sends to us name."""
    peer = _peer(scenario, spec, i, a["from"])
    if peer is None:
        return
    fds, values = sent.get((peer, spec.label(i)), (set(), set()))
    if a["fd"] is not None:
        held["fd"].add(a["fd"])
    else:
        held["fd"].update(a["prefix"] + name for name in fds)
    if a["value"] is not None:
        held["value"].add(a["value"])
    else:
        held["value"].update(a["prefix"] + name for name in values)
