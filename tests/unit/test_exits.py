"""How a trainer process ends (trainer/exits.py) and the 128+N rule both sides share
(``kubeclip.api.signal_name``): the termination log is written only where Kubernetes made one, the
first writer wins when asked to, and a signal is named the same way by trainer and controller."""

from __future__ import annotations

import signal

from kubeclip.api import EXIT_PREFLIGHT, SIGNAL_EXIT_BASE, NonFiniteLoss, read_termination_message, signal_name
from trainer import exits


def test_termination_log_is_written_only_where_it_exists(tmp_path):
    target = tmp_path / "termination-log"
    exits.write_termination_log("preflight: boom", str(target))
    assert not target.exists()
    target.write_text("")
    exits.write_termination_log("preflight: boom", str(target))
    assert target.read_text() == "preflight: boom"


def test_the_termination_log_is_cut_to_what_kubernetes_keeps(tmp_path):
    target = tmp_path / "termination-log"
    target.write_text("")
    exits.write_termination_log("é" * 5000, str(target))  # 2 bytes each: cut on a character boundary
    assert len(target.read_bytes()) == 4096
    assert target.read_text() == "é" * 2048


def test_fail_prints_writes_and_returns_the_code(tmp_path, monkeypatch, capsys):
    target = tmp_path / "termination-log"
    target.write_text("")
    monkeypatch.setenv("KUBECLIP_TERMINATION_LOG", str(target))
    assert exits.fail("preflight: bad separator", EXIT_PREFLIGHT) == EXIT_PREFLIGHT
    assert capsys.readouterr().err == "preflight: bad separator\n"
    assert target.read_text() == "preflight: bad separator"
    assert exits.has_content(str(target))


def test_without_overwrite_the_first_writer_wins(tmp_path, capsys):
    """Rank 0's verdict stays; a knock-on failure of another rank of the container does not replace it."""
    target = tmp_path / "termination-log"
    target.write_text("")
    assert not exits.has_content(str(target))
    assert not exits.has_content(str(tmp_path / "absent"))
    exits.fail("loss is nan at step 3", NonFiniteLoss.exit_code, path=str(target), overwrite=False, echo=False)
    exits.fail("rank 1 failed: broken pipe", 1, path=str(target), overwrite=False, echo=False)
    assert read_termination_message(target.read_text()).text == "loss is nan at step 3"
    exits.fail("rank 1 failed: broken pipe", 1, path=str(target))  # overwrite (the default) replaces it
    assert target.read_text() == "rank 1 failed: broken pipe"
    assert capsys.readouterr().err == "rank 1 failed: broken pipe\n"


def test_a_signal_is_named_as_the_shell_numbers_it():
    assert signal_name(int(signal.SIGKILL)) == "SIGKILL"
    assert signal_name(int(signal.SIGBUS)) == "SIGBUS"
    assert signal_name(137 - SIGNAL_EXIT_BASE) == "SIGKILL"  # a container that exited 137
    assert signal_name(200) == "signal 200"  # a number no signal of this platform has
