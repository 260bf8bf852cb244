"""Kill points for the kill tests, loaded into job processes (TUNEYARD_PLUGINS): while
TUNEYARD_TEST_KILL_AT is set, the job's process kills itself (SIGKILL) at the point it names:

- `commit:K`: before the K-th commit of the job body (its work happens between commits);
- `writes:Class`: before the first write of a row of that model class: the files of a result
  are in place, its row does not say so yet;
- `finish`: before the process records how the job ended.
"""

import os
import signal
import sys
import threading

from sqlalchemy import event
from sqlalchemy.orm import Session

from tuneyard.jobs import service

POINT = os.environ.get("TUNEYARD_TEST_KILL_AT", "")
_commits = 0


def _in_job_process() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "tuneyard.jobs.child"


def _die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _before_commit(_session) -> None:
    global _commits
    if threading.current_thread() is threading.main_thread():  # not the heartbeat
        _commits += 1
        if _commits == int(POINT.removeprefix("commit:")):
            _die()


def _before_flush(session, _context, _instances) -> None:
    written = {type(row).__name__ for row in (*session.new, *session.dirty)}
    if POINT.removeprefix("writes:") in written:
        _die()


if POINT and _in_job_process():
    if POINT.startswith("commit:"):
        event.listen(Session, "before_commit", _before_commit)
    elif POINT.startswith("writes:"):
        event.listen(Session, "before_flush", _before_flush)
    elif POINT == "finish":
        service.finish = _die
    else:
        raise ValueError(f"Unknown kill point {POINT!r}")
