"""`make fuzz` as docs/API.md shows it: the command is taken from the document and run as written.

This is how `make test` runs the fuzz suites (marked `fuzz`, left out of its direct run): the documented
command is the deterministic case, seed 1 with 15 cases per operation, so each runs once per `make test`.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # a whole pytest run of its own, as a child process

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1500)  # a whole pytest run of its own: the three fuzz tests with the deterministic seed
def test_the_documented_fuzz_replay_runs_and_passes() -> None:
    doc = (ROOT / "docs" / "API.md").read_text()
    [command] = re.findall(r"```sh\n(HEATREC_FUZZ_SEEDS=\S+ HEATREC_FUZZ_EXAMPLES=\S+ make fuzz)\n```", doc)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEATREC_FUZZ", "PYTEST_"))}
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
                       check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    # The deterministic case, as `make test` means it: both stateless runs and the three stateful chains ran
    # seed 1 with the same cases every time (and no random walk besides), and all three tests passed.
    assert command.startswith("HEATREC_FUZZ_SEEDS=1 HEATREC_FUZZ_EXAMPLES=15 "), command
    assert r.stdout.count("--seed 1 ") == 5, r.stdout[-3000:]
    assert r.stdout.count("--generation-deterministic") == 5, r.stdout[-3000:]
    assert re.search(r"\b3 passed\b", r.stdout), r.stdout[-3000:]
