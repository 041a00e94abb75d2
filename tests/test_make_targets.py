"""`make unit` and `make bench` do what README.md and docs/BENCHMARKS.md say (read from the Makefile, not run)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, `$(PY)` spelt out as the documents spell it."""
    text = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.M)
    assert found, f"Makefile has no recipe for {target}"
    return [line.strip().replace("$(PY)", ".venv/bin/python") for line in found.group(1).splitlines()]


def test_make_unit_leaves_out_integration_tests_under_the_guard() -> None:
    """No integration test runs, and HEATREC_UNIT_ONLY=1 fails any unit test that starts something."""
    assert recipe("unit") == ['HEATREC_UNIT_ONLY=1 .venv/bin/python -m pytest -m "not integration"']


def test_make_test_still_runs_everything() -> None:
    """`make test` lints and runs the whole suite: the fuzz modules once, through the `make fuzz` replay test."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'^test: setup lint\n\t\$\(PY\) -m pytest -m "not fuzz" --durations=25\n', makefile, re.M)
    marked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                    if re.search(r"^pytestmark = pytest\.mark\.fuzz$", p.read_text(), re.M))
    fuzz_recipe = " ".join(recipe("fuzz"))
    assert marked and all(m in fuzz_recipe for m in marked), (marked, fuzz_recipe)
    replay = (ROOT / "tests" / "deploy" / "test_make_fuzz.py").read_text()
    assert "pytest.mark.fuzz" not in replay, "the replay test itself must run in `make test`"


def test_make_bench_runs_every_benchmark_as_documented() -> None:
    """Each bench/bench_*.py once, in the order and with the arguments docs/BENCHMARKS.md gives."""
    doc = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    documented = [re.sub(r"\s*\[.*\]$", "", line).strip()  # optional arguments in [brackets] stay off
                  for line in re.findall(r"^\.venv/bin/python bench/.*$", doc, re.M)]
    assert recipe("bench") == documented
    scripts = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("bench_*.py"))
    assert sorted(line.split()[1] for line in documented) == scripts
