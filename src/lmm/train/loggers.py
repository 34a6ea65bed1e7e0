"""Experiment loggers that need a word more than Lightning's class (conf/logger/)."""

from __future__ import annotations

import os


def mlflow(tracking_uri: str, **kwargs):
    """Lightning's MLFlowLogger. MLflow 3 keeps its file store (`file:` URIs: no database, no
    server, what a laptop or a cluster's shared disk has) in maintenance mode and refuses it
    unless MLFLOW_ALLOW_FILE_STORE is set; choosing a `file:` URI here is that choice."""
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
