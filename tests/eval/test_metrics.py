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


from lmm.eval.metrics import anls, extract_letter, mme_answer, pope_answer, vqa_soft_accuracy  # noqa: E402
from lmm.eval.vqa_normalize import normalize_vqa_answer  # noqa: E402


@pytest.mark.parametrize(
    "raw,normalised",
    [
        ("Two", "2"),
        ("The dog.", "dog"),
        ("a cat's toy", "cat 's toy"),
        ("3.5", "3.5"),  # digits keep their decimal point
        ("yes!", "yes"),
        ("black-and-white", "black and white"),  # punctuation not touching a space -> space
        ("black - white", "black white"),  # touching a space -> removed
        ("1,000", "1000"),
        ("dont", "don't"),  # contraction restored
        ("none", "0"),
        ("An apple\n", "apple"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_normalize_vqa_answer_quirks():
    # "?" and "," are dropped before punctuation handling; "'s" is split off.
    assert normalize_vqa_answer("What's up?") == "what 's up"
    # commas go first, so "a-b" becomes "a b" and the article "a" then drops
    assert normalize_vqa_answer("1,5 a-b") == "15 b"
    # at most 32 periods are stripped (re.UNICODE passed as the count in the original)
    assert normalize_vqa_answer("." * 40) == "." * 8


def test_vqa_soft_accuracy_values():
    assert vqa_soft_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_soft_accuracy("yes", ["Yes."] * 10) == 1.0  # both sides normalised
    assert vqa_soft_accuracy("", ["dog"] * 10) == 0.0
    assert vqa_soft_accuracy("", ["a"] * 10) == 1.0  # quirk: the article "a" normalises to "" too
    assert vqa_soft_accuracy("x", []) == 0.0


def test_yes_no_parsing():
    assert pope_answer("No, there is no dog.") == "no"
    assert pope_answer("There is not a cat. Yes.") == "no"
    assert pope_answer("Yes. No.") == "yes"  # first sentence only
    assert pope_answer("") == "yes"
    assert mme_answer("Yes") == "yes" and mme_answer("no, it is not") == "no" and mme_answer("maybe") == "other"


def test_letters_and_anls():
    assert extract_letter("B", 4) == "B" and extract_letter("b", 4) is None and extract_letter("", 4) is None
    assert extract_letter("Answer: D", 4) == "D" and extract_letter("E.", 4) is None
    assert anls("hello", ["helo"]) == pytest.approx(0.8)
    assert anls("abc", ["xyz"]) == 0.0 and anls("ABC ", ["abc"]) == 1.0
