"""The pipeline lock RELION uses: a ``.relion_lock`` directory holding ``lock_default_pipeline.star``.

Creating a directory is atomic on every local and network file system, so whoever
creates ``.relion_lock`` owns the pipeline until it removes it; RELION, CCP-EM's
pipeliner and emclass2d all honour the same lock. We wait up to ``timeout_s`` and break
a stale lock: one whose owner is a dead process on this host, or older than
``stale_after_s`` (a crashed writer on another host).

Example::

    with PipelineLock(project_dir):
        pipe = read_pipeline(project_dir / "default_pipeline.star")
        ...

See also: :class:`emclass2d.nodes.graph.project.Project` (which takes this lock to edit).
"""
from __future__ import annotations

import datetime
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

from emclass2d.nodes.graph import labels as L
class LockTimeout(RuntimeError):
    """The pipeline lock could not be taken in time."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class PipelineLock:
    """RELION's pipeline lock for one project directory; a re-usable context manager."""

    def __init__(self, project_dir: str | os.PathLike[str], *, timeout_s: float = 60.0,
                 stale_after_s: float = 30 * 60.0, poll_s: float = 0.01) -> None:
        self.dir = Path(project_dir) / L.LOCK_DIR
        self.file = self.dir / L.LOCK_FILE
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self._held = False

    def _message(self) -> str:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        return f"locked by emclass2d pid={os.getpid()} host={socket.gethostname()} time={stamp}\n"

    def stale_reason(self) -> str | None:
        """Why the current lock counts as stale (dead owner, too old), or None."""
        try:
            text = self.file.read_text(errors="replace")
            age = time.time() - self.file.stat().st_mtime
        except FileNotFoundError:
            try:
                age = time.time() - self.dir.stat().st_mtime
            except FileNotFoundError:
                return None
            text = ""
            # A directory without its file: a writer died between mkdir and write, or is
            # in that instant now; only age tells them apart.
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        if fields.get("host") == socket.gethostname() and fields.get("pid", "").isdigit():
            if not _pid_alive(int(fields["pid"])):
                return f"owner pid {fields['pid']} on this host is gone"
        if age > self.stale_after_s:
            return f"lock is {age / 60:.0f} min old"
        return None

    def _break(self) -> None:
        # Rename first so a concurrent breaker cannot delete a lock taken after ours broke.
        grave = self.dir.with_name(f"{L.LOCK_DIR}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.dir, grave)
        except FileNotFoundError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout_s``; raises :class:`LockTimeout`."""
        deadline = time.monotonic() + self.timeout_s
        delay = self.poll_s
        while True:
            try:
                os.mkdir(self.dir)
            except FileExistsError:
                reason = self.stale_reason()
                if reason:
                    self._break()
                    continue
                if time.monotonic() > deadline:
                    owner = self.file.read_text(errors="replace").strip() if self.file.exists() else "unknown owner"
                    raise LockTimeout(f"{self.dir}: pipeline locked ({owner}) for more than {self.timeout_s:g} s; "
                                      f"remove {self.dir} if no program is using the project") from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.2)
                continue
            self.file.write_text(self._message())
            self._held = True
            return

    def release(self) -> None:
        """Remove the lock file and directory (only if we hold it)."""
        if not self._held:
            return
        self._held = False
        try:
            self.file.unlink()
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self.dir)
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PipelineLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
