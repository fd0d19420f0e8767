"""Teardown of phases on success, failure, Ctrl-C and SIGTERM."""

import os
import signal
import threading

import pytest

from coi.launcher.errors import CoiError, Interrupted, SessionError
from coi.launcher.session.phases import Teardown, phased


def test_undo_runs_in_reverse_on_success() -> None:
    done: list[str] = []
    teardown = Teardown()
    with phased(teardown):
        teardown.push("a", lambda: done.append("a"))
        teardown.push("b", lambda: done.append("b"))
    assert done == ["b", "a"]


def test_on_failure_only_keeps_steps_on_success() -> None:
    done: list[str] = []
    teardown = Teardown()
    with phased(teardown, on_failure_only=True):
        teardown.push("a", lambda: done.append("a"))
    assert done == []


def test_failure_undoes_and_propagates() -> None:
    done: list[str] = []
    teardown = Teardown()
    with pytest.raises(SessionError), phased(teardown, on_failure_only=True):
        teardown.push("a", lambda: done.append("a"))
        raise SessionError("boom")
    assert done == ["a"]


def test_ctrl_c_becomes_interrupted_after_undo() -> None:
    done: list[str] = []
    teardown = Teardown()
    with pytest.raises(Interrupted) as err, phased(teardown):
        teardown.push("a", lambda: done.append("a"))
        raise KeyboardInterrupt
    assert done == ["a"]
    assert err.value.exit_code == 130


def test_sigterm_becomes_interrupted_with_143() -> None:
    done: list[str] = []
    teardown = Teardown()
    with pytest.raises(Interrupted) as err, phased(teardown):
        teardown.push("a", lambda: done.append("a"))
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(2)
    assert done == ["a"]
    assert err.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_failing_undo_step_does_not_stop_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    done: list[str] = []
    teardown = Teardown()

    def broken() -> None:
        raise CoiError("cannot")

    with phased(teardown):
        teardown.push("first", lambda: done.append("first"))
        teardown.push("broken", broken)
    assert done == ["first"]
    assert "cleanup failed: broken: cannot" in capsys.readouterr().err


def test_signal_during_undo_is_deferred_until_undo_finished() -> None:
    done: list[str] = []
    teardown = Teardown()

    def slow_undo() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        done.append("undo finished")

    teardown.push("slow", slow_undo)
    with pytest.raises(KeyboardInterrupt):
        teardown.run()
    assert done == ["undo finished"]


def test_discard_forgets_a_step() -> None:
    done: list[str] = []
    teardown = Teardown()
    with phased(teardown):
        teardown.push("keep", lambda: done.append("keep"))
        teardown.push("drop", lambda: done.append("drop"))
        teardown.discard("drop")
    assert done == ["keep"]
