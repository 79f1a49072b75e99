"""core.io.exclusive: the output lock never follows a link nor opens a special file, refuses a
second holder, and leaves nothing behind after a finished run (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from advrank.core.io import exclusive
from advrank.errors import AdvrankError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links, FIFOs and flock")


def plant_symlink(lock, victim):
    os.symlink(victim, lock)


def plant_dangling_symlink(lock, victim):
    os.symlink(victim.parent / "does-not-exist-yet", lock)


def plant_hard_link(lock, victim):
    os.link(victim, lock)


def plant_fifo(lock, victim):
    os.mkfifo(lock)


def plant_folder(lock, victim):
    lock.mkdir()


@pytest.mark.parametrize("plant", [plant_symlink, plant_dangling_symlink, plant_hard_link,
                                   plant_fifo, plant_folder])
def test_a_planted_lock_path_is_refused_and_the_victim_left_unchanged(tmp_path, plant):
    """Whoever can write a shared output folder must not make the next run write elsewhere
    (a symlink or hard link to someone's file) nor hang it (a FIFO)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    before = victim.stat()
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".advrank.lock"
    plant(lock, victim)
    with pytest.raises(AdvrankError, match="not a plain file") as info:
        with exclusive(lock, "output folder"):
            pytest.fail("the lock was taken")
    assert "\n" not in str(info.value)
    assert victim.read_bytes() == b"precious\n"
    assert victim.stat().st_mtime_ns == before.st_mtime_ns
    assert not (tmp_path / "does-not-exist-yet").exists()  # a dangling link created nothing
    assert os.path.lexists(lock)  # the planted entry is the user's to inspect, not removed


def test_the_lock_holds_the_pid_and_is_removed_after_the_run(tmp_path):
    lock = tmp_path / "out" / ".advrank.lock"
    with exclusive(lock, "output folder"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()
    with exclusive(lock, "output folder"):  # and can be taken again
        assert lock.exists()
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_a_leftover_lock_file_of_a_killed_run_is_reused(tmp_path):
    lock = tmp_path / ".advrank.lock"
    lock.write_text("12345\n")  # what SIGKILL leaves: the file, not the kernel's lock
    with exclusive(lock, "output folder"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


HOLD = textwrap.dedent("""
    import sys, time
    from advrank.core.io import exclusive
    with exclusive(sys.argv[1], "output folder"):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_a_second_holder_is_refused_and_changes_nothing(tmp_path):
    """Another process holds the lock: this one is refused at once, the lock file (and its
    pid) stay as they are; once the holder finishes, the lock is free and gone."""
    lock = tmp_path / ".advrank.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "held"
        before = lock.read_bytes()
        with pytest.raises(AdvrankError, match="being written by another advrank process"):
            with exclusive(lock, "output folder"):
                pytest.fail("two holders")
        assert lock.read_bytes() == before == f"{holder.pid}\n".encode()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert not lock.exists()
    with exclusive(lock, "output folder"):
        pass
