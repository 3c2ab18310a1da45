"""Shared test fixtures. Reference parity tests are marked `reference`; when the reference folder exists they
must run: a skip becomes a failure, and a session in which none of them passed fails. Tests marked `slow` are left
out of the default run (pyproject.toml's addopts) and run by .ci/run; a reference test may not be slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("FLASHHEAD_REFERENCE", REPO.parent / "shared" / "reference"))
REFERENCE_PRESENT = (REFERENCE_DIR / "fixtures").is_dir()

_reference_passed = 0


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_PRESENT:
        pytest.skip(f"reference data not found at {REFERENCE_DIR} (set FLASHHEAD_REFERENCE)")
    return REFERENCE_DIR


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _reference_passed
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("reference") is None:
        return
    if report.skipped and REFERENCE_PRESENT:
        report.outcome = "failed"
        report.longrepr = f"reference test skipped although {REFERENCE_DIR} exists: {report.longrepr}"
    elif report.when == "call" and report.passed:
        _reference_passed += 1


def pytest_sessionfinish(session, exitstatus):
    # .ci/run sets FLASHHEAD_REQUIRE_REFERENCE=1: then even a run that selected no reference test fails.
    required = os.environ.get("FLASHHEAD_REQUIRE_REFERENCE") == "1"
    selected = any(i.get_closest_marker("reference") for i in session.items)
    if REFERENCE_PRESENT and (selected or required) and _reference_passed == 0 and exitstatus == 0:
        session.exitstatus = 1
        print(f"\nERROR: {REFERENCE_DIR} exists but no reference parity test passed")


def pytest_collection_modifyitems(config, items):
    # The default run deselects `slow` tests: a reference test marked slow would silently not run there.
    both = [item.nodeid for item in items if item.get_closest_marker("reference") and item.get_closest_marker("slow")]
    if both:
        raise pytest.UsageError(f"reference tests may not be marked slow: {', '.join(both)}")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread while the tests run, restored after them: the models are tiny, and on a small shared
    machine two OpenMP threads spinning against other processes make their many small operations several times
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
