"""Scenarios: many client processes, described in a TOML file, run against one daemon.

A scenario names processes by role (`app`, `load`, `admin`, `ib`, `debugger`), how many
of each, and the steps each runs with the outcome it expects (success by default, or an
errno name). The file format is in the README ("Scenarios"). The stages, a module each:

- vocabulary.py: the steps, their fields, roles, choices, and the names steps use and make
- model.py, checks.py, names.py: the file as read, and every check it must pass first
- worker.py, steps_*.py: one process running its steps
- runner.py: the processes started, wired, kept in step at sync points, accounted for
- report.py: the result table or JSON, and the `xec scenario` commands
"""

from .checks import load
from .model import SHIPPED, ProcessSpec, Scenario, ScenarioError, Step, resolve_scenario_path
from .report import check, cli, list_shipped, print_table, results_document, run
from .runner import ProcessResult, run_scenario
from .vocabulary import STEPS

__all__ = [
    "SHIPPED",
    "STEPS",
    "ProcessResult",
    "ProcessSpec",
    "Scenario",
    "ScenarioError",
    "Step",
    "check",
    "cli",
    "list_shipped",
    "load",
    "print_table",
    "resolve_scenario_path",
    "results_document",
    "run",
    "run_scenario",
]
