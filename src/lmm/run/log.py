"""Keep what lmm tells the user in the run's own log: every `[lmm]` line this process prints
(progress, skipped samples, costs, errors) is also appended to RUN_DIR/run.log, next to Hydra's
log lines, so a run directory explains itself after the terminal is gone.

Lines are held in memory until the command is accepted for that directory (`accept()`: a train
command once it holds the lock and its identity matches): a refused command leaves run.log, like
every other byte of the run, as it was."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

MARK = "[lmm]"


class DeferredLog:
    """run.log, opened for appending only once accepted; until then its lines wait in memory."""

    def __init__(self, path: Path):
        self.path, self.pending, self.file = path, [], None

    def accept(self) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a")
            self.file.write("".join(self.pending))
            self.file.flush()
            self.pending = []

    def write(self, text: str) -> None:
        if self.file is None:
            self.pending.append(text)
        else:
            self.file.write(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


_active: list[DeferredLog] = []  # the run.log of the innermost copied_to, if any


def accept() -> None:
    """The command is accepted for its run directory: write what was held, and go on writing."""
    if _active:
        _active[-1].accept()


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
    """While active, `[lmm]` lines on stdout and stderr are also appended to `path` once the
    command is accepted (accept()); None: no copy."""
    if path is None:
        yield
        return
    log = DeferredLog(path)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
    _active.append(log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        _active.pop()
        log.close()


def log_path(cfg) -> Path | None:
    """RUN_DIR/run.log under Hydra on the process that writes the run (rank 0), else None."""
    from hydra.core.hydra_config import HydraConfig

    from lmm.core.ranks import first_process
    from lmm.run.directory import RUN_LOG

    if not HydraConfig.initialized() or not first_process():
        return None
    return Path(cfg.run_dir) / RUN_LOG
