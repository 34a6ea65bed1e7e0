"""Only [lmm] lines reach run.log, and a progress bar's redraws never pile up in memory."""

import io

from lmm.run.log import _Tee


def test_tee_copies_lmm_lines_and_forgets_redraws():
    out, log = io.StringIO(), io.StringIO()
    tee = _Tee(out, log)
    tee.write("[lmm] one\nnoise\n")
    for step in range(1000):
        tee.write(f"\rEpoch 0: {step}/1000")
    tee.write("\n[lmm] two")
    tee.write(" done\n")
    assert out.getvalue().startswith("[lmm] one\nnoise\n\rEpoch 0: 0/1000")
    assert [line.split("] ", 1)[1] for line in log.getvalue().splitlines()] == ["[lmm] one", "[lmm] two done"]
    assert tee.pending == ""
    tee.write("\rEpoch 0: 1/2\rEpoch 0: 2/2")
    assert tee.pending == "Epoch 0: 2/2"
