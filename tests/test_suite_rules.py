"""The rules tests/conftest.py keeps for every test: exactly one tier, a private tracking store
and the session's cache, nothing left behind in the environment, no network in the fast tier;
and tests/support/shared_data.py's skip that turns into a failure when the data are required."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from tests.support import shared_data

pytestmark = pytest.mark.unit

pytest_plugins = ["pytester"]

# The inner runs use the suite's own hooks and fixtures, and its markers.
CONFTEST = (
    "from tests.conftest import isolated_environment, isolated_session, pytest_make_collect_report, relxfer_cache\n"
)
INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
markers =
    unit: u
    integration: i
    system: s
"""


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def test_a_test_with_no_tier_or_two_is_a_collection_error(inner):
    inner.makepyfile(
        test_tiers=textwrap.dedent("""
            import pytest

            def test_none():
                pass

            @pytest.mark.unit
            @pytest.mark.system
            def test_two():
                pass

            @pytest.mark.integration
            def test_one():
                pass
        """)
    )
    result = inner.runpytest_inprocess("-m", "integration")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_tiers.py*",
            "*every test needs exactly one tier marker*",
            "*test_tiers.py::test_none: no tier",
            "*test_tiers.py::test_two: system, unit",
            "*1 error*",
        ]
    )
    assert "test_one:" not in result.stdout.str()


def test_each_test_gets_its_own_store_and_directory_and_leaves_the_environment_as_it_was(inner, monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "a-run-of-the-shell")
    monkeypatch.setenv("RELXFER_CACHE", "/the/users/cache")
    inner.makepyfile(
        test_env=textwrap.dedent("""
            import os
            import pytest

            pytestmark = pytest.mark.unit
            seen = []

            def test_first(relxfer_cache):
                assert "MLFLOW_RUN_ID" not in os.environ
                assert os.environ["RELXFER_CACHE"] == str(relxfer_cache)
                seen.append(os.environ["MLFLOW_TRACKING_URI"])
                assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{os.getcwd()}/mlflow.db"
                os.environ["MLFLOW_EXPERIMENT_NAME"] = "leaks?"
                os.environ["RELXFER_CACHE"] = "/elsewhere"

            def test_second(relxfer_cache):
                assert "MLFLOW_EXPERIMENT_NAME" not in os.environ
                assert os.environ["RELXFER_CACHE"] == str(relxfer_cache)
                uri = os.environ["MLFLOW_TRACKING_URI"]
                assert uri.startswith("sqlite:///") and uri.endswith("/mlflow.db") and uri != seen[0]
        """)
    )
    inner.runpytest_inprocess().assert_outcomes(passed=2)
    assert os.environ["MLFLOW_RUN_ID"] == "a-run-of-the-shell"
    assert os.environ["RELXFER_CACHE"] == "/the/users/cache"


def test_a_unit_test_cannot_connect_to_a_server():
    with socket.socket() as sock, pytest.raises(AssertionError, match="a unit test connected to"):
        sock.connect(("127.0.0.1", 9))


def test_missing_shared_data_skips_or_fails_when_required(tmp_path, monkeypatch):
    missing = tmp_path / "belebele"
    monkeypatch.delenv(shared_data.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"real files not found at {missing}"):
        shared_data.need(missing, "real files")
    assert shared_data.available(missing, "real files") is False
    monkeypatch.setenv(shared_data.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{shared_data.REQUIRE_ENV} is set"):
        shared_data.need(missing, "real files")
    with pytest.raises(pytest.fail.Exception, match=f"{shared_data.REQUIRE_ENV} is set"):
        shared_data.available(missing, "real files")
    (tmp_path / "here").mkdir()
    assert shared_data.need(tmp_path / "here", "real files") == Path(tmp_path / "here")
