"""One training per run folder: a lock file holding the process id of the run writing there.

Two ``minidiff train --out runs/x`` started in the same second both find the folder empty; left
alone, both would train and the folder would end with one run's config and the other's
checkpoint.  ``RunLock(folder)`` creates ``folder/.lock`` with ``O_CREAT | O_EXCL``, which the
operating system does atomically: of two processes, exactly one creates the file, the other
is told it exists.  The file holds the owner's process id and is removed when the run ends
(``release``, or leaving the ``with`` block), whether it finished, failed or was interrupted.

A run killed outright (``kill -9``, a power cut) leaves its lock behind.  A lock whose process
no longer exists is *stale*: the next run takes it over and says so.  (Two runs that find the
same stale lock at the same instant may both take it over; the window is the time between
reading the dead pid and creating the new file.)
"""
from __future__ import annotations

import os
import time

from minidiff.errors import MinidiffInputError

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "process_alive", "check_run_lock"]

LOCK_NAME = ".lock"


class RunLockedError(MinidiffInputError):
    """Another live process is training into the same folder."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # it exists, and belongs to someone else
        return True
    except OSError:
        return False
    return True


def _read_pid(path: str, wait: float = 0.0):
    """The pid in the lock file ``path``, or None (absent, unreadable, or still empty after
    ``wait`` seconds: its creator writes the pid just after creating it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path, encoding="ascii") as stream:
                text = stream.read().strip()
        except OSError:
            return None
        if text or time.monotonic() >= deadline:
            try:
                return int(text)
            except ValueError:
                return None
        time.sleep(0.05)


def _refuse(name: str, folder, pid: int, path: str):
    return RunLockedError(f"{name}: {folder} is in use by another training (pid {pid}, lock "
                          f"file {path})", "wait for it to end, or choose another --out")


def check_run_lock(name: str, folder, note=None) -> None:
    """``RunLockedError`` if a live process holds ``folder``'s lock (the early, clear refusal;
    ``RunLock`` is the atomic one); a stale lock is removed, and ``note(text)`` told so."""
    path = os.path.join(os.fspath(folder), LOCK_NAME)
    if not os.path.isfile(path):
        return
    pid = _read_pid(path, wait=2.0)
    if pid is not None and process_alive(pid):
        raise _refuse(name, folder, pid, path)
    _take_over(path, pid, note)


def _take_over(path: str, pid, note) -> None:
    if note is not None:
        owner = f"process {pid}" if pid is not None else "an unreadable owner"
        note(f"{path}: taking over the lock of {owner}, which is no longer running (it was "
             "stopped without cleaning up)")
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class RunLock:
    """``folder/.lock`` held by this process (``note(text)`` is told of a stale lock taken
    over).  ``RunLockedError`` naming ``name`` and the owner's pid if a live process holds it."""

    def __init__(self, folder: str, name: str = "--out", note=None):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.held = False
        self.made_folder = not os.path.isdir(self.folder)   # removed again if left empty
        os.makedirs(self.folder, exist_ok=True)
        for attempt in (0, 1):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path, wait=2.0)
                if pid is not None and process_alive(pid):
                    self._remove_folder()
                    raise _refuse(name, folder, pid, self.path) from None
                if attempt:
                    self._remove_folder()
                    raise RunLockedError(f"{name}: {folder}: could not take over the lock "
                                         f"file {self.path}") from None
                _take_over(self.path, pid, note)
                continue
            with os.fdopen(handle, "w", encoding="ascii") as stream:
                stream.write(f"{os.getpid()}\n")
            self.held = True
            return

    def release(self) -> None:
        """Remove the lock file if this process still owns it."""
        if self.held and _read_pid(self.path) == os.getpid():
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.held = False
        self._remove_folder()

    def _remove_folder(self) -> None:
        """The folder this lock created, if nothing else was written into it."""
        if self.made_folder:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass
            self.made_folder = False

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
