"""Reading a scenario file and checking it before anything runs.

`load()` reports every problem of a file at once, each with its place (process, step,
field), and a "did you mean" for a misspelt step, field, key, role, choice, errno or
name. One problem does not hide the others: a process with an unknown role still has
its steps checked, a step with an unknown field still has its other fields checked.
Names are checked too (names.py): a step that uses a BO, a mapping or a value no
earlier step of that process made (or received) is refused here, not at run time.
"""

from __future__ import annotations

import errno as errno_module
import re
import tomllib
from pathlib import Path
from typing import Any

from . import names
from .model import ProcessSpec, Scenario, ScenarioError, Step, fill
from .vocabulary import (
    _CHOICES,
    _DATA_STEPS,
    BATCH_OPS,
    DEFAULT_TIMEOUT,
    PROCESS_KEYS,
    REQUIRED,
    ROLES,
    STEPS,
    SUCCESS,
    TOP_LEVEL_KEYS,
    did_you_mean,
)

MAX_COUNT = 256


def errno_number(name: str) -> int:
    number = getattr(errno_module, name, None)
    return number if isinstance(number, int) and name.startswith("E") else 0


_ERRNO_NAMES = sorted(name for name in dir(errno_module) if errno_number(name))


def load(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError lists every problem with its place."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(path, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(path, [f"not text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, [f"invalid TOML: {exc}"]) from None
    problems: list[str] = []
    for key in sorted(set(raw) - set(TOP_LEVEL_KEYS)):
        problems.append(f"unknown top-level key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        problems.append(f"'timeout' must be a positive number of seconds, not {timeout!r}")
        timeout = DEFAULT_TIMEOUT
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            problems.append(f"{key!r} must be a string")
    entries = raw.get("process", [])
    if not isinstance(entries, list) or not entries:
        problems.append("no [[process]] tables")
        entries = []
    checked = [_process(n, entry, problems) for n, entry in enumerate(entries, 1)]
    processes = [p for p in checked if p is not None]
    named = [p.name for p in processes]
    for dup in sorted({x for x in named if named.count(x) > 1}):
        problems.append(f"two processes are named {dup!r}")
    scenario = Scenario(
        path=path,
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        timeout=float(timeout),
        processes=tuple(processes),
    )
    if not any("two processes are named" in p for p in problems):
        _cross_check(scenario, problems)
        names.check(scenario, problems)
    if problems:
        raise ScenarioError(path, _in_file_order(problems, named))
    return scenario


_PLACE = re.compile(r"^process '([^']*)'(?:, step (\d+))?")


def _in_file_order(problems: list[str], named: list[str]) -> list[str]:
    """The file's own problems first, then each process's in file order, step by step
    (the checks run in stages; a reader goes down the file)."""

    def where(problem: str) -> tuple[int, int]:
        found = _PLACE.match(problem)
        if found is None:
            return (-1, 0)
        process = found.group(1).split(".")[0]
        order = named.index(process) if process in named else len(named)
        return (order, int(found.group(2) or 0))

    return sorted(problems, key=where)


def _process(n: int, entry: Any, problems: list[str]) -> ProcessSpec | None:
    where = f"process #{n}"
    if not isinstance(entry, dict):
        problems.append(f"{where}: not a table")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not name or "." in name or name in ("next", "prev"):
        problems.append(f"{where}: 'name' must be a string without dots (not next/prev)")
        name = f"#{n}"  # its steps are still checked, under its number
    where = f"process {name!r}"
    role = entry.get("role", "app")
    allowed = ROLES.get(role) if isinstance(role, str) else None
    if allowed is None:
        problems.append(
            f"{where}: unknown role {role!r} (one of {', '.join(ROLES)}){did_you_mean(role, ROLES)}"
        )
    for key in sorted(set(entry) - set(PROCESS_KEYS)):
        problems.append(f"{where}: unknown key {key!r}{did_you_mean(key, PROCESS_KEYS)}")
    count = entry.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        problems.append(f"{where}: 'count' must be an integer from 1 to {MAX_COUNT}")
        count = 1
    raw_steps = entry.get("steps", [])
    if not isinstance(raw_steps, list):
        problems.append(f"{where}: 'steps' must be a list of step tables")
        raw_steps = []
    if role == "ib" and (count != 1 or raw_steps):
        problems.append(f"{where}: an 'ib' process is the aux driver: count 1, no steps")
    raw_steps = list(raw_steps)
    if "barriers" in entry:
        if role != "load":
            problems.append(f"{where}: 'barriers' is the shorthand of role 'load' only")
        raw_steps.insert(0, {"do": "barrier", "count": entry["barriers"]})
    steps = [
        _step(where, index, raw, allowed, str(role), problems)
        for index, raw in enumerate(raw_steps, 1)
    ]
    # kept even with a bad role: the checks of names and peers still look at its steps
    return ProcessSpec(
        name=name, role=str(role), count=count, steps=tuple(s for s in steps if s is not None)
    )


def _step(
    where: str, index: int, raw: Any, allowed: set[str] | None, role: str, problems: list[str]
) -> Step | None:
    """Check one step table; None if it names no known step (its fields mean nothing)."""
    if not isinstance(raw, dict):
        problems.append(f"{where}, step {index}: not a table")
        return None
    before = len(problems)
    do = raw.get("do")
    if do not in STEPS:
        hint = did_you_mean(do, STEPS) or f" (known: {', '.join(sorted(STEPS))})"
        missing = "no 'do' field" if do is None else f"unknown step {do!r}"
        problems.append(f"{where}, step {index}: {missing}{hint}")
        return None
    place = f"{where}, step {index} ({do})"
    if allowed is not None and do not in allowed:
        problems.append(f"{place}: not a step a process of role {role!r} can run")
    fields = STEPS[do]
    args: dict[str, Any] = {}
    for key in sorted(set(raw) - set(fields) - {"do", "expect"}):
        hint = did_you_mean(key, [*fields, "expect"]) or f" (fields: {', '.join(fields) or 'none'})"
        problems.append(f"{place}: unknown field {key!r}{hint}")
    for key, (kind, default) in fields.items():
        if key not in raw:
            if default is REQUIRED:
                problems.append(f"{place}: missing field {key!r}")
            args[key] = default
            continue
        problem = _check_field(do, key, kind, raw[key])
        if problem:
            problems.append(f"{place}: field {key!r} {problem}")
        args[key] = [raw[key]] if kind == "names" and isinstance(raw[key], str) else raw[key]
    if do in _DATA_STEPS:
        kinds = ("data", "hex", "u32", "u64") + (("length",) if do == "debug_read" else ())
        given = [k for k in kinds if k in raw]
        if len(given) != 1:
            problems.append(f"{place}: give exactly one of {', '.join(kinds)}")
    if do == "events" and not raw.get("kinds"):
        problems.append(f"{place}: field 'kinds' names no event")
    expect = raw.get("expect", SUCCESS)
    if not isinstance(expect, str) or not (expect == SUCCESS or errno_number(expect)):
        hint = did_you_mean(expect, [SUCCESS, *_ERRNO_NAMES])
        problems.append(f"{place}: expect must be 'success' or an errno name, not {expect!r}{hint}")
        expect = SUCCESS
    return Step(index=index, do=do, args=args, expect=expect, valid=len(problems) == before)


def _check_field(do: str, key: str, kind: str, value: Any) -> str:
    """What is wrong with one field's value, or ''."""
    sample = ProcessSpec("p", "app", 2, ()).context(0)
    try:
        if kind in ("name", "str"):
            if not isinstance(value, str):
                return "must be a string"
            if kind == "name":
                fill(value, sample)
        elif kind == "int":
            if isinstance(value, str):
                int(fill(value, sample), 0)
            elif not isinstance(value, int) or isinstance(value, bool):
                return "must be an integer"
        elif kind == "ref":
            if not isinstance(value, int | str) or isinstance(value, bool):
                return "must be an integer or a name"
            if isinstance(value, str):
                fill(value, sample)
        elif kind == "bool" and not isinstance(value, bool):
            return "must be true or false"
        elif kind == "float" and (not isinstance(value, int | float) or isinstance(value, bool)):
            return "must be a number"
        elif kind == "names":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "must be a name or a list of names"
            for v in value:
                fill(v, sample)
        elif kind == "ops":
            return _check_ops(value)
    except KeyError as exc:
        hint = did_you_mean(exc.args[0], sample)
        return f"uses an unknown placeholder {{{exc.args[0]}}} (known: {', '.join(sample)}){hint}"
    except (ValueError, IndexError) as exc:
        return f"has a bad placeholder or number: {exc}"
    choices = _CHOICES.get((do, key))
    if choices is not None:
        wrong = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
        if wrong:
            return f"must be one of {', '.join(choices)}{did_you_mean(wrong[0], choices)}"
    return ""


def _check_ops(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of {op = ..., ...} tables"
    for n, op in enumerate(value, 1):
        if not isinstance(op, dict) or op.get("op") not in BATCH_OPS:
            name = op.get("op") if isinstance(op, dict) else None
            hint = did_you_mean(name, BATCH_OPS)
            return f"instruction {n}: 'op' must be one of {', '.join(BATCH_OPS)}{hint}"
        wanted = set(BATCH_OPS[op["op"]])
        if set(op) - {"op"} != wanted:
            return f"instruction {n} ({op['op']}): needs exactly {', '.join(sorted(wanted))}"
        for key in wanted:
            if not isinstance(op[key], int | str) or isinstance(op[key], bool):
                return f"instruction {n} ({op['op']}): {key} must be an integer"
    return ""


def _cross_check(scenario: Scenario, problems: list[str]) -> None:
    """What needs the whole file: peers and the aux driver."""
    ib_names = scenario.ib_names
    labels = [spec.label(i) for spec, i in scenario.instances()]
    for spec, i in scenario.instances():
        for step in (s for s in spec.steps if s.valid):
            place = f"process {spec.label(i)!r}, {step.describe()}"
            peer = {"send": "to", "recv": "from", "attach": "target", "detach": "target"}
            if step.do in peer:
                ref = step.args[peer[step.do]]
                verb = "attach to" if step.do in ("attach", "detach") else None
                try:
                    filled = fill(ref, spec.context(i))
                    if verb:
                        scenario.peer(spec, i, filled, verb=verb)
                    else:
                        scenario.peer(spec, i, filled)
                except (ValueError, KeyError) as exc:
                    hint = did_you_mean(ref, labels) if "no process instance" in str(exc) else ""
                    problems.append(f"{place}: {exc}{hint}")
            if step.do == "ib_open":
                wanted = step.args["ib"]
                if not ib_names:
                    problems.append(f"{place}: no process has role 'ib' (the aux driver)")
                elif wanted is None and len(ib_names) > 1:
                    problems.append(f"{place}: say which aux driver ('ib' field)")
                elif wanted is not None and wanted not in ib_names:
                    hint = did_you_mean(wanted, ib_names)
                    problems.append(f"{place}: no 'ib' process named {wanted!r}{hint}")
