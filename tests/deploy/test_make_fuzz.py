"""`make fuzz` as docs/API.md shows it: the command is taken from the document and run as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # a whole pytest run of its own, as a child process

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1500)  # a whole pytest run of its own: three fuzz tests with one seed
def test_the_documented_fuzz_replay_runs_and_passes() -> None:
    doc = (ROOT / "docs" / "API.md").read_text()
    [command] = re.findall(r"```sh\n(HEATREC_FUZZ_SEEDS=\S+ HEATREC_FUZZ_EXAMPLES=\S+ make fuzz)\n```", doc)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEATREC_FUZZ", "PYTEST_"))}
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
                       check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    # The seed it was asked for is the one schemathesis ran: both stateless runs and the three stateful chains
    # (which walk the deterministic seed 1 first, for their coverage checks), and all three tests passed.
    assert r.stdout.count("--seed 123456") == 5, r.stdout[-3000:]
    assert re.search(r"\b3 passed\b", r.stdout), r.stdout[-3000:]
