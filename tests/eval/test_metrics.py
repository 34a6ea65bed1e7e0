"""Exact match, box parsing, IoU and Acc@IoU give the right numbers."""

import pytest

from lmm.eval.metrics import BoxAccuracy, ExactMatch, box_iou, normalize_answer, parse_box


def test_normalize_answer():
    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer("Two  Dogs") == "two dogs"
    assert normalize_answer("3.5") == "3.5"


def test_exact_match():
    metric = ExactMatch()
    metric.update(["Red.", "blue", "2"], ["red", "green", "2"])
    metric.update(["circle"], ["Circle"])
    assert float(metric.compute()) == pytest.approx(3 / 4)


def test_parse_box():
    assert parse_box("The box is [0.10, 0.2, 0.5, 1.00].") == [0.1, 0.2, 0.5, 1.0]
    assert parse_box("[1, 2, 3]") is None
    assert parse_box("no box") is None


def test_box_iou():
    assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert box_iou([0, 0, 0.5, 1], [0.25, 0, 0.75, 1]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]) == 0.0


def test_box_accuracy_threshold_and_unparsed():
    metric = BoxAccuracy(threshold=0.5)
    target = [0.0, 0.0, 0.5, 1.0]
    metric.update(["[0.0, 0.0, 0.5, 1.0]", "[0.25, 0.0, 0.75, 1.0]", "not a box", "[0.0, 0.0, 0.4, 1.0]"], [target] * 4)
    assert float(metric.compute()) == pytest.approx(2 / 4)  # IoU 1.0 and 0.8 pass; 1/3 fails
    assert int(metric.unparsed) == 1
