"""lmm.core.console: Lightning's lines once, no tip, the checked warnings filtered, the stage's progress bar."""

import logging
import warnings

from lmm.core import console
from lmm.train.progress import StageProgressBar


def test_lightning_lines_once_and_no_tip(caplog):
    console.setup()
    console.setup()  # idempotent: one filter, no handler
    assert not [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO):
        rank_zero.info("GPU available: False, used: False")
        rank_zero.info(
            "💡 Tip: For seamless cloud logging ... try installing [litlogger](https://pypi.org/project/litlogger/)"
        )
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_only_the_checked_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.setup()
        warnings.warn_explicit(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...",
            FutureWarning,
            "_pytree.py",
            21,
            module="lightning.pytorch.utilities._pytree",
        )
        warnings.warn(
            "FSDP2-wrapped module (FSDPMLPConnector) returned a view tensor. An in-place op ...",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn(
            "FSDP2-wrapped module (FSDPDecoderLayer) returned a view tensor. An in-place op ...",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "FSDP2-wrapped module (FSDPDecoderLayer) returned a view tensor. An in-place op ...",
        "something else",
    ]


def test_the_progress_bar_names_the_stage():
    assert StageProgressBar("finetune")._get_train_description(current_epoch=0) == "finetune"


def test_the_first_run_noise_is_gone_at_its_source():
    """transformers' weight-loading bars, Lightning's count of eval-mode modules (lmm's frozen parts,
    on purpose), matplotlib's font-cache line: none reaches the terminal; other warnings still do."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.setup()
        rank_zero_warn("Found 77 module(s) in eval mode at the start of training. This may lead to ...")
        rank_zero_warn("Found 3 things elsewhere")
    assert [str(w.message) for w in caught] == ["Found 3 things elsewhere"]
    assert not transformers_logging.is_progress_bar_enabled()
    assert logging.getLogger("matplotlib").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.WARNING)
