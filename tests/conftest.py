"""Shared test fixtures. Reference parity tests are marked `reference`; when the reference folder exists they
must run: a skip becomes a failure, and a session in which none of them passed fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
