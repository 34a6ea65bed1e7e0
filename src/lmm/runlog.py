"""Keep what lmm tells the user in the run's own log: every `[lmm]` line this process prints
(progress, skipped samples, costs, errors) is also appended to RUN_DIR/run.log, next to Hydra's
log lines, so a run directory explains itself after the terminal is gone."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

MARK = "[lmm]"


_active: list = []  # the open run.log of the innermost copied_to, if any


def record(message: str) -> None:
    """Append a line to the run's log only (an error Hydra is about to print on the terminal)."""
    if _active:
        _active[-1].write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
        _active[-1].flush()


class _Tee:
    """A text stream that passes everything through and copies `[lmm]` lines to a file."""

    def __init__(self, stream, log):
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        self.pending = self.pending.rsplit("\r", 1)[-1]  # a progress bar redraws with \r: keep only the last draw
        for line in lines:
            if MARK in line:
                self.log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")
                self.log.flush()
        return self.stream.write(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding ... of the real stream
        return getattr(self.stream, name)


@contextmanager
def copied_to(path: Path | None):
    """While active, `[lmm]` lines on stdout and stderr are also appended to `path` (None: no copy)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        _active.append(log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
            _active.pop()


def log_path(cfg) -> Path | None:
    """RUN_DIR/run.log under Hydra on the process that writes the run (rank 0), else None."""
    from hydra.core.hydra_config import HydraConfig

    from lmm.rundir import RUN_LOG, first_process

    if not HydraConfig.initialized() or not first_process():
        return None
    return Path(cfg.run_dir) / RUN_LOG
