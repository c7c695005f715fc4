"""A scenario as the runner and the workers see it once its file has passed the checks:
processes, their steps, and how instances and peers are named.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

SHIPPED = Path(__file__).resolve().parent / "shipped"  # package data: there wherever installed


class ScenarioError(Exception):
    """A scenario file that cannot run; `problems` says where and why, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.problems = problems


@attrs.frozen
class Step:
    index: int  # 1-based, within its process
    do: str
    args: Mapping[str, Any]
    expect: str  # SUCCESS or an errno name
    valid: bool = True  # False: the checks found a problem in it (it never runs)

    def describe(self) -> str:
        return f"step {self.index} ({self.do})"


@attrs.frozen
class ProcessSpec:
    name: str
    role: str
    count: int
    steps: tuple[Step, ...]

    def label(self, i: int) -> str:
        return self.name if self.count == 1 else f"{self.name}.{i}"

    def context(self, i: int) -> dict[str, Any]:
        """What placeholders in its strings stand for, in instance i."""
        n = self.count
        return {
            "i": i,
            "n": n,
            "next": (i + 1) % n,
            "prev": (i - 1) % n,
            "name": self.name,
            "self": self.label(i),
        }


@attrs.frozen
class Scenario:
    path: Path
    name: str
    description: str
    timeout: float
    processes: tuple[ProcessSpec, ...]

    def instances(self) -> Iterator[tuple[ProcessSpec, int]]:
        """Every process the runner spawns (the aux driver is not one of them)."""
        for spec in self.processes:
            if spec.role != "ib":
                for i in range(spec.count):
                    yield spec, i

    def find(self, label: str) -> tuple[ProcessSpec, int] | None:
        for spec, i in self.instances():
            if spec.label(i) == label:
                return spec, i
        return None

    def peer(
        self, spec: ProcessSpec, i: int, ref: str, verb: str = "send to or receive from"
    ) -> str:
        """The label a `to`/`from`/`target` names: next/prev in a ring, NAME or NAME.K."""
        if ref in ("next", "prev"):
            if spec.count < 2:
                raise ValueError(f"{ref!r} needs count >= 2 (process {spec.name!r} has 1)")
            return spec.label((i + (1 if ref == "next" else -1)) % spec.count)
        found = self.find(ref)
        if found is None:
            raise ValueError(f"no process instance named {ref!r}")
        if found == (spec, i):
            raise ValueError(f"a process cannot {verb} itself")
        return ref

    def pairs(self) -> set[tuple[str, str]]:
        """The socket pairs to wire: every two processes that talk, (a, b) with a < b."""
        wanted = set()
        for spec, i in self.instances():
            for step in spec.steps:
                if step.do in ("send", "recv"):
                    ref = fill(step.args["to" if step.do == "send" else "from"], spec.context(i))
                    a, b = sorted((spec.label(i), self.peer(spec, i, ref)))
                    wanted.add((a, b))
        return wanted

    @property
    def ib_names(self) -> list[str]:
        return [p.name for p in self.processes if p.role == "ib"]


def fill(template: str, context: Mapping[str, Any]) -> str:
    """Fill {i}, {n}, {next}, {prev}, {name}, {self} in a string from the file."""
    return template.format_map(context)


def resolve_scenario_path(name: str | Path) -> Path:
    """A file, or the name of a shipped scenario (with or without .toml)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (SHIPPED / f"{name}.toml", SHIPPED / str(name)):
        if candidate.exists():
            return candidate
    return path
