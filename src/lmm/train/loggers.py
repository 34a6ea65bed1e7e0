"""Experiment loggers that need a word more than Lightning's class (conf/logger/)."""

from __future__ import annotations

import os

from lightning.pytorch.loggers import TensorBoardLogger


def mlflow(tracking_uri: str, **kwargs):
    """Lightning's MLFlowLogger. MLflow 3 keeps its file store (`file:` URIs: no database, no
    server, what a laptop or a cluster's shared disk has) in maintenance mode and refuses it
    unless MLFLOW_ALLOW_FILE_STORE is set; choosing a `file:` URI here is that choice."""
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)


class LiteralPathTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger with its directory taken literally: Lightning expands `$VAR`
    and `~` in it, so a run directory named by an override such as `name=$HOME` would log
    somewhere else. lmm's run paths are used as they are, everywhere."""

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        return os.path.join(log_dir, self.sub_dir) if isinstance(self.sub_dir, str) else log_dir
