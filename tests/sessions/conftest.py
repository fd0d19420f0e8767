"""Fixtures of the session tests (defined in session_harness, which the tests import too)."""

from session_harness import (  # noqa: F401  (fixtures are found by name)
    coi_image,
    fake_image,
    fake_tool,
    no_leftovers,
    run_user,
    scoi,
    workspace,
)
