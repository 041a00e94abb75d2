"""Sparkplug test fixtures: the protobuf classes compiled from the specification's schema, once per session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.sparkplug.host import compile_proto


@pytest.fixture(scope="session")
def sparkplug_pb2() -> Iterator[ModuleType]:
    """sparkplug_b_pb2 generated at test time by grpcio-tools (in-process protoc: no child process)."""
    d = Path(tempfile.mkdtemp(prefix="heatrec-sparkplug-pb2-"))
    try:
        yield compile_proto(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
