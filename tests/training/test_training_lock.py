import signal
import subprocess
import sys

import pytest

from phmdiff.training.lock import RunLock

_HOLDER = r"""
import sys, time
from phmdiff.training.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _hold(run):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    proc = _hold(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"in use by process {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    proc = _hold(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.took_over_from == proc.pid
    finally:
        lock.release()


def test_release_lets_the_next_run_in(tmp_path):
    with RunLock(tmp_path) as first:
        assert first.took_over_from is None
    with RunLock(tmp_path) as second:
        assert second.took_over_from is None
