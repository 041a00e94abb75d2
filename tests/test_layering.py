"""Imports go one way: no cycles, and no layer reaches up (the rules are the data below; docs/ARCHITECTURE.md).

Counted: every import, also inside functions and under TYPE_CHECKING (tests/layering.py says why).
Patterns: `pkg.*` is pkg and everything below it; any other name is that one module. In LAYERS an exact
name wins over a `pkg.*` pattern (a subsystem's `config` module stands in the configuration layer).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.layering import Rules, check_rules, collect_imports, find_cycles

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "drivers", "simulators")

# Top to bottom; a module may import its own layer and the layers below it. Every module is in one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # What people and other systems talk to, and what puts the service together.
    ("interfaces", ("service.api.*", "service.scada.*", "service.metrics", "service.cli", "service.demo",
                    "service.app", "service.fleet.api", "service.fleet.central", "service.ui.*",
                    "service.fleet.history_api", "service.fleet.records_api")),
    # What the plant does: control, every write to a device, accounting, alarms, commissioning.
    ("functions", ("service.control.*", "service.writes", "service.accounting.*", "service.alarms.*",
                   "service.commissioning", "service.preflight", "service.fleet.*",
                   "service.dispatch.*", "service.fleet.keys",
                   "service.dispatch.history")),  # reads the plant's history (infrastructure) for the forecasts
    # The database, the audit trail, tokens, and the local PostgreSQL/Mosquitto of the demo and the tests.
    ("infrastructure", ("service.storage.*", "service.audit", "service.auth", "service.token_store",
                        "service.localservers.*")),
    # The plant file's model: service.config puts together the sections each subsystem owns (its `config`
    # module) and the drivers' and simulators' maps below, and checks the references between them.
    ("configuration", ("service.config", "service.accounting.config", "service.alarms.config", "service.api.config",
                       "service.control.config", "service.scada.config", "service.scada.sparkplug_config",
                       "service.storage.config", "service.fleet_config", "service.dispatch.config")),
    # The wire: drivers talk to devices, simulators are devices.
    ("protocols", ("drivers.*", "simulators.*")),
    # What everything stands on: samples, the bus, the strict base of the config models, time, tasks, signals,
    # the root of the exception tree every layer's errors grow from, and files only their owner may read.
    ("core", ("service", "service.model", "service.bus", "service.schema", "service.clock", "service.tasks",
              "service.signals", "service.errors", "service.private_files")),
)

MAY_IMPORT_ONLY: dict[str, tuple[str, ...]] = {
    # A driver owns a connection and publishes samples: it knows the sample, the bus's sink and the clock,
    # and builds its point and device maps (drivers.config) on the configuration's strict base; its private keys
    # are written 0600 from the start (service.private_files).
    "drivers.*": ("drivers.*", "service.model", "service.bus", "service.clock", "service.schema", "service.errors",
                  "service.private_files"),
    # The simulated plant owns its [simulation] models (simulators.config) and is timed like the service.
    "simulators.*": ("simulators.*", "service.schema", "service.clock", "service.tasks", "service.errors"),
    # The whole file's model knows the sections' models, nothing that runs them.
    "service.config": ("service.schema", "service.errors", "drivers.config", "simulators.config",
                       "service.accounting.config", "service.alarms.config", "service.api.config",
                       "service.control.config", "service.scada.config", "service.scada.sparkplug_config",
                       "service.storage.config", "service.fleet_config", "service.dispatch.config"),
    # A section's models are plain data: they stand on the strict base alone.
    "service.accounting.config": ("service.schema",),
    "service.alarms.config": ("service.schema",),
    "service.api.config": ("service.schema",),
    "service.control.config": ("service.schema",),
    "service.scada.config": ("service.schema",),
    "service.scada.sparkplug_config": ("service.schema",),
    "service.storage.config": ("service.schema",),
    "service.dispatch.config": ("service.schema",),
    # [uplink] and central.toml: plain data; the centre's database is the plant's [database] model.
    "service.fleet_config": ("service.schema", "service.storage.config"),
}

ONLY_IMPORTED_BY: dict[str, tuple[str, ...]] = {
    "service.cli": ("service.__main__",),  # the console script calls service.cli:main; nothing imports it
    "service.demo": ("service.cli",),  # `heatrec demo`
    "service.app": ("service.cli", "service.demo"),  # the composition root: `heatrec run` and `heatrec demo`
    "service.fleet.central": ("service.cli",),  # `heatrec central`
    # The service runs the simulators only for `heatrec simulate` and `heatrec demo`; service.config only
    # reads their [simulation] models (it may import nothing else of them: MAY_IMPORT_ONLY).
    "simulators.*": ("simulators.*", "service.cli", "service.demo", "service.config"),
}

FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("*", "tests.*", "the tests are not shipped"),
    ("*", "bench.*", "the benchmarks are not shipped (bench/closed_loop.py couples controller and plant)"),
)

# Imports that break a rule today, each with why. To shrink, never to grow; one no longer needed fails.
# (Empty since the device and point models moved from service.config into drivers/config.py.)
EXCEPTIONS: dict[tuple[str, str], str] = {}

RULES = Rules(LAYERS, MAY_IMPORT_ONLY, ONLY_IMPORTED_BY, FORBIDDEN, EXCEPTIONS)


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


def test_no_import_cycles() -> None:
    """No module reaches itself through its imports (function-level and TYPE_CHECKING imports included)."""
    modules, imports = collect_imports(ROOT, PACKAGES)
    cycles = find_cycles(modules, imports)
    assert not cycles, _report(cycles)


def test_imports_follow_the_layers() -> None:
    """Every module is in one layer, imports only downward, and keeps to its package's rules."""
    modules, imports = collect_imports(ROOT, PACKAGES)
    problems = check_rules(modules, imports, RULES)
    assert not problems, _report(problems)


# The walker itself, on small trees written for it: it must be able to fail.

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_walker_sees_a_cycle_through_function_and_type_checking_imports(tmp_path: Path) -> None:
    """A cycle hidden in a function and under TYPE_CHECKING (relative import) is still a cycle."""
    root = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    import pkg.b\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "pkg/c.py": "import pkg.a\n",
    })
    modules, imports = collect_imports(root, ["pkg"])
    assert find_cycles(modules, imports) == [
        "import cycle: pkg.a -> pkg.b -> pkg.a (pkg/a.py:2, in a function; pkg/b.py:3, under TYPE_CHECKING)"]


def test_walker_reports_the_shortest_cycle_of_a_tangle(tmp_path: Path) -> None:
    """Three modules in one strongly connected component: one concrete cycle, the rest named."""
    root = _tree(tmp_path, {"p/__init__.py": "", "p/x.py": "import p.y\nimport p.z\n", "p/y.py": "import p.x\n",
                            "p/z.py": "from p import y\n"})
    modules, imports = collect_imports(root, ["p"])
    assert find_cycles(modules, imports) == [
        "import cycle: p.x -> p.y -> p.x (p/x.py:1; p/y.py:1) (one cycle of the tangle p.x, p.y, p.z)"]


def test_walker_resolves_relative_and_from_imports(tmp_path: Path) -> None:
    """`from ..m import n`, `from pkg import submodule` and attribute imports land on the right module."""
    root = _tree(tmp_path, {
        "s/__init__.py": "", "s/model.py": "X = 1\n", "s/sub/__init__.py": "from . import leaf\n",
        "s/sub/leaf.py": "from ..model import X\nfrom s import model\nfrom s.model import X as Y\nimport json\n",
    })
    modules, imports = collect_imports(root, ["s"])
    assert sorted(modules) == ["s", "s.model", "s.sub", "s.sub.leaf"]
    assert sorted((i.importer, i.imported, i.line) for i in imports) == [
        ("s.sub", "s.sub.leaf", 1), ("s.sub.leaf", "json", 4), ("s.sub.leaf", "s.model", 1)]


def test_walker_names_each_rule_an_import_breaks(tmp_path: Path) -> None:
    """Upward imports, allow-lists, importer lists, forbidden pairs, stray modules and stale exceptions."""
    root = _tree(tmp_path, {
        "service/__init__.py": "", "service/model.py": "", "service/api/__init__.py": "",
        "service/api/app.py": "import service.model\n", "service/cli.py": "", "service/stray.py": "",
        "service/storage.py": "import service.api.app\n",
        "drivers/__init__.py": "", "drivers/opcua.py": "from service.api import app\nimport tests.support\n",
        "drivers/modbus.py": "import service.cli\n",
    })
    rules = Rules(
        layers=(("interfaces", ("service.api.*", "service.cli")), ("functions", ("service.storage",)),
                ("protocols", ("drivers.*",)), ("core", ("service", "service.model"))),
        may_import_only={"drivers.*": ("drivers.*", "service.model")},
        only_imported_by={"service.cli": ()},
        forbidden=(("*", "tests.*", "not shipped"),),
        exceptions={("drivers.modbus", "service.cli"): "grandfathered", ("drivers.opcua", "service.model"): "gone"})
    modules, imports = collect_imports(root, ["service", "drivers"])
    assert check_rules(modules, imports, rules) == [
        "service.stray is in no layer: add it to LAYERS in tests/test_layering.py",
        "drivers.opcua imports service.api.app (drivers/opcua.py:1): drivers may not import service.api.app "
        "(it may import only drivers, service.model)",
        "drivers.opcua imports service.api.app (drivers/opcua.py:1): drivers may not import service.api "
        "(layer interfaces is above protocols)",
        "drivers.opcua imports tests.support (drivers/opcua.py:2): * may not import tests: not shipped",
        "service.storage imports service.api.app (service/storage.py:1): service.storage may not import "
        "service.api (layer interfaces is above functions)",
        "exception drivers.opcua -> service.model breaks no rule any more: remove it from EXCEPTIONS",
    ]


def test_walker_passes_a_clean_tree(tmp_path: Path) -> None:
    """Downward imports only: nothing to report."""
    root = _tree(tmp_path, {"service/__init__.py": "", "service/model.py": "",
                            "service/app.py": "import service.model\n"})
    rules = Rules(layers=(("top", ("service.app",)), ("core", ("service", "service.model"))))
    modules, imports = collect_imports(root, ["service"])
    assert find_cycles(modules, imports) == []
    assert check_rules(modules, imports, rules) == []


def test_walker_lets_an_exact_layer_name_win_over_its_package(tmp_path: Path) -> None:
    """`pkg.config` named exactly stands in its own layer, the rest of `pkg.*` in the package's; a tie fails."""
    root = _tree(tmp_path, {"s/__init__.py": "", "s/f/__init__.py": "", "s/f/run.py": "import s.f.config\n",
                            "s/f/config.py": "", "s/root.py": "import s.f.config\n"})
    rules = Rules(layers=(("functions", ("s.f.*",)), ("configuration", ("s.root", "s.f.config")),
                          ("core", ("s",))))
    modules, imports = collect_imports(root, ["s"])
    assert check_rules(modules, imports, rules) == []
    tie = Rules(layers=(("functions", ("s.f.*", "s.f.config")), ("configuration", ("s.root", "s.f.config")),
                        ("core", ("s",))))
    assert check_rules(modules, imports, tie) == [
        "s.f.config is in more than one layer: functions (s.f.config) and configuration (s.f.config)"]


def test_walker_refuses_a_relative_import_beyond_the_top(tmp_path: Path) -> None:
    """A relative import that climbs out of the tree is an error, not a silent miss."""
    root = _tree(tmp_path, {"t/__init__.py": "", "t/m.py": "from ... import x\n"})
    with pytest.raises(ValueError, match="beyond the top-level package"):
        collect_imports(root, ["t"])
