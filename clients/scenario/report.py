"""What `xec scenario run|check|list` print: a table per run (or, with `--json`, one
JSON document), the problems of a bad file, the shipped scenarios. Exit statuses: 0 all
held (or the file is good), 1 a step failed, 2 a bad file; a daemon that cannot be
reached is the command line's to report (69)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import attrs

from protocols.cli import EX_FAILURE, EX_OK, EX_USAGE

from .checks import load
from .model import SHIPPED, Scenario, ScenarioError, resolve_scenario_path
from .runner import ProcessResult, run_scenario


def print_table(scenario: Scenario, results: list[ProcessResult], out: TextIO) -> None:
    print(f"\nscenario {scenario.name}: {len(results)} processes", file=out)
    width = max([len("process"), *(len(r.label) for r in results)])
    rw = max([5, *(len(r.role) for r in results)])
    print(
        f"{'process':<{width}}  {'role':<{rw}}  {'passed':>9}  {'failed':>6}  first failure",
        file=out,
    )
    for r in results:
        passed = f"{r.passed}/{r.total}"
        line = f"{r.label:<{width}}  {r.role:<{rw}}  {passed:>9}  {r.failed:>6}  {r.first_failure}"
        print(line.rstrip(), file=out)
    failed = sum(1 for r in results if r.failed)
    verdict = "all expectations met" if not failed else f"{failed} process(es) FAILED"
    print(verdict, file=out)


def results_document(scenario: Scenario, results: list[ProcessResult]) -> dict[str, Any]:
    """The run as `--json` prints it."""
    keep = ("label", "role", "total", "passed", "failed", "first_failure")
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "ok": not any(r.failed for r in results),
        "processes": [{k: v for k, v in attrs.asdict(r).items() if k in keep} for r in results],
    }


def _bad_file(exc: ScenarioError, path: Path, as_json: bool, out: TextIO) -> int:
    if as_json:
        print(json.dumps({"file": str(path), "ok": False, "problems": exc.problems}), file=out)
    print(exc, file=sys.stderr)
    return EX_USAGE


def run(path: Path, socket_path: Path | None, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Run a scenario file; 0 when every expectation held, 1 otherwise, 2 for a bad file."""
    try:
        scenario = load(path)
    except ScenarioError as exc:
        return _bad_file(exc, path, as_json, out)
    results = run_scenario(scenario, socket_path)
    if as_json:
        print(json.dumps(results_document(scenario, results), sort_keys=True), file=out)
    else:
        print_table(scenario, results, out)
    return EX_FAILURE if any(r.failed for r in results) else EX_OK


def check(path: Path, as_json: bool, out: TextIO = sys.stdout) -> int:
    try:
        scenario = load(path)
    except ScenarioError as exc:
        return _bad_file(exc, path, as_json, out)
    steps = sum(len(spec.steps) for spec, _ in scenario.instances())
    instances = sum(1 for _ in scenario.instances())
    pairs = len(scenario.pairs())
    if as_json:
        document = {
            "file": str(path), "ok": True, "problems": [], "processes": instances,
            "steps": steps, "socket_pairs": pairs,
        }  # fmt: skip
        print(json.dumps(document), file=out)
    else:
        print(f"{path}: ok ({instances} processes, {steps} steps, {pairs} socket pairs)", file=out)
    return EX_OK


def list_shipped(as_json: bool, out: TextIO = sys.stdout) -> int:
    found = []
    for path in sorted(SHIPPED.glob("*.toml")):
        try:
            description = load(path).description
        except ScenarioError:
            description = "(does not check: run `xec scenario check` on it)"
        found.append({"name": path.stem, "description": description, "path": str(path)})
    if as_json:
        print(json.dumps(found), file=out)
    for entry in [] if as_json else found:
        print(f"{entry['name']:<20} {entry['description']}", file=out)
    return EX_OK


def cli(args: argparse.Namespace) -> int:
    """Dispatch of `xec scenario run|check|list`."""
    if args.which == "list":
        return list_shipped(args.json)
    path = resolve_scenario_path(args.file)
    if args.which == "check":
        return check(path, args.json)
    return run(path, args.socket, args.json)
