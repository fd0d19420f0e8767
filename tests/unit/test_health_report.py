"""Health report status and exit codes."""

from coi.launcher.health.checks import CheckResult, HealthReport, Status


def test_exit_codes_follow_the_worst_check() -> None:
    ok = CheckResult("a", Status.OK, "fine")
    warn = CheckResult("b", Status.WARN, "meh", "do x")
    fail = CheckResult("c", Status.FAIL, "bad", "do y")
    assert HealthReport([ok]).exit_code == 0
    assert HealthReport([ok, warn]).exit_code == 1
    assert HealthReport([warn, fail, ok]).exit_code == 2


def test_json_shape() -> None:
    report = HealthReport([CheckResult("a", Status.WARN, "meh", "do x", {"k": 1})])
    assert report.to_json() == {
        "status": "degraded",
        "checks": [
            {"name": "a", "status": "warn", "message": "meh", "hint": "do x", "details": {"k": 1}}
        ],
    }
