"""Two runs into one directory: the second is refused, naming the directory and the process that holds it."""

import subprocess
import sys

import pytest

import cafe_core
from cafe_core.run_lock import RunInUseError

pytestmark = pytest.mark.slow

HOLD = """
import sys
from cafe_core.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_into_a_directory_in_use_is_refused_then_runs_once_it_is_free(spec_dict, tmp_path):
    spec_dict["run"]["limit"] = 2
    directory = tmp_path / "run"
    directory.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        with pytest.raises(RunInUseError) as caught:
            cafe_core.run(spec_dict, directory)
        message = str(caught.value)
        assert message.startswith(f"{directory} is in use by another cafe run (pid {other.pid} on ")
        assert "wait for it to finish or stop it, or choose another output directory" in message
        assert not (directory / "run.db").exists()  # refused before anything was computed or written
    finally:
        other.communicate("")
    assert other.returncode == 0
    assert len(cafe_core.run(spec_dict, directory).rows) > 0
