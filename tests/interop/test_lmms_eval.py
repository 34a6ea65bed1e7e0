"""lmms-eval round trip: `lmms-eval --model lmm` on the synthetic benchmark's local tasks equals task=eval.

One run of lmms-eval's own CLI (offline, a local task folder) on an lmm directory whose name has
a comma, as sweep run directories do: generate_until answers and scores equal SyntheticBenchmark's
on the same questions; loglikelihood values equal lmm's teacher-forced ones; a text-only and a
corrupt-image document are answered ("" and counted) without stopping the evaluation.
"""

import base64
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmm.build.factory import build_run
from lmm.data.collate import Collator
from lmm.eval.benchmarks import SyntheticBenchmark
from lmm.eval.likelihood import labelled_logprobs
from lmm.interop.export import save_lmm
from lmm.interop.lmms_eval_tasks import write_tasks
from tests.conftest import compose_config
from tests.eval.test_likelihood import reply_labels

pytestmark = pytest.mark.slow  # the lmms-eval harness: make test runs it, make test-fast does not

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 30  # records of the test split: ~35 generative questions

if os.environ.get("LMM_TEST_EXTRAS") == "required":  # make test installs the extra: missing, it must fail
    importlib.import_module("lmms_eval")
else:
    pytest.importorskip(
        "lmms_eval", reason="the lmms-eval extra: pip install -e '.[lmms-eval]' (make test installs it)"
    )


@pytest.fixture(scope="module")
def lmms_eval_run(data_root, tmp_path_factory):
    """A tiny model in a directory named like a sweep run, the task folder (plus two edge-case
    documents) and one lmms-eval CLI run over it."""
    tmp = tmp_path_factory.mktemp("lmms_eval")
    cfg = compose_config([], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    model_dir = tmp / "connector=mlp,seed=0"
    save_lmm(model.eval(), processor, cfg, model_dir)
    tasks = tmp / "tasks"
    counts = write_tasks(data_root / "synthetic", tasks, limit=LIMIT)
    vqa = tasks / "lmm_synthetic_vqa.jsonl"
    edge = [
        {
            "id": "text-only",
            "turn": 0,
            "source": "vqa",
            "qtype": "count",
            "question": "How many sides has a square?",
            "answer": "zzz",
            "images": [],
        },
        {
            "id": "corrupt",
            "turn": 0,
            "source": "vqa",
            "qtype": "count",
            "question": "<image>\nHow many objects?",
            "answer": "zzz",
            "images": [base64.b64encode(b"\xff\xd8\xff\xe0 not a jpeg").decode()],
        },
    ]
    vqa.write_text(vqa.read_text() + "".join(json.dumps(d) + "\n" for d in edge))
    out = tmp / "out"
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("lmms-eval")),
            "--model",
            "lmm",
            "--model_args",
            f"pretrained='{model_dir}',device=cpu",
            "--include_path",
            str(tasks),
            "--tasks",
            "lmm_synthetic,lmm_synthetic_vqa_mc",
            "--batch_size",
            "8",
            "--output_path",
            str(out),
            "--log_samples",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    samples = {
        path.name.split("_samples_")[1].removesuffix(".jsonl"): [
            json.loads(line) for line in path.read_text().splitlines()
        ]
        for path in out.rglob("*_samples_*.jsonl")
    }
    return SimpleNamespace(
        model=model,
        processor=processor,
        tasks=tasks,
        counts=counts,
        results=results,
        samples=samples,
        log=done.stdout + done.stderr,
        model_dir=model_dir,
    )


@pytest.mark.slow
def test_generate_until_equals_task_eval(lmms_eval_run, data_root, tmp_path):
    run = lmms_eval_run
    model, processor, counts, results, samples = run.model, run.processor, run.counts, run.results, run.samples
    ours = SyntheticBenchmark(str(data_root / "synthetic"), limit=LIMIT).run(model, processor, out_dir=tmp_path)
    predictions = [json.loads(line) for line in (tmp_path / "synthetic.jsonl").read_text().splitlines()]
    for task, metric, key in [
        ("vqa", "exact_match", "vqa/exact_match"),
        ("ocr", "exact_match", "ocr/exact_match"),
        ("region_grounding", "acc_iou50", "region/grounding_acc_iou50"),
        ("region_caption", "exact_match", "region/caption_exact_match"),
    ]:
        name = f"lmm_synthetic_{task}"
        logged = sorted(samples[name], key=lambda s: s["doc_id"])[
            : counts[name]
        ]  # vqa has two edge documents after these
        assert len(logged) == counts[name] == ours["counts"][key] > 0
        # The same questions in the same order, and every answer equal to task=eval's.
        assert [s["filtered_resps"] for s in logged] == [p["prediction"] for p in predictions if p["metric"] == key]
        assert [s[metric] for s in logged] == [p["score"] for p in predictions if p["metric"] == key]
        if task != "vqa":
            assert results[name][f"{metric},none"] == pytest.approx(ours["metrics"][key], abs=1e-4)
    # The two edge documents: answered (text-only) or counted (corrupt image) and scored 0; the run went on.
    vqa = sorted(samples["lmm_synthetic_vqa"], key=lambda s: s["doc_id"])
    n = counts["lmm_synthetic_vqa"]
    assert len(vqa) == n + 2 and vqa[-1]["filtered_resps"] == "" and vqa[-2]["filtered_resps"] != ""
    assert results["lmm_synthetic_vqa"]["exact_match,none"] == pytest.approx(
        ours["metrics"]["vqa/exact_match"] * n / (n + 2), abs=1e-4
    )
    assert "[lmm] generate_until: 1 request(s) could not be asked: image:" in run.log


@pytest.mark.slow
def test_loglikelihood_equals_teacher_forcing(lmms_eval_run):
    run = lmms_eval_run
    model, processor = run.model, run.processor
    docs = [json.loads(line) for line in (run.tasks / "lmm_synthetic_vqa_mc.jsonl").read_text().splitlines()]
    logged = sorted(run.samples["lmm_synthetic_vqa_mc"], key=lambda s: s["doc_id"])
    assert len(logged) == len(docs) == run.counts["lmm_synthetic_vqa_mc"]
    correct = 0
    for doc, sample in zip(docs, logged, strict=True):
        image = {"png": base64.b64decode(doc["images"][0])}
        examples = [reply_labels(processor, doc["question"], choice, image) for choice in doc["choices"]]
        expected = labelled_logprobs(model.eval(), [Collator(processor.tokenizer.pad_token_id)(examples)])
        # lmms-eval minimises the value: the negative log-likelihood of each choice (its log writes them as strings).
        got = [(float(nll), greedy == "True") for nll, greedy in sample["filtered_resps"]]
        assert [nll for nll, _ in got] == pytest.approx([-logprob for logprob, _ in expected], abs=1e-4)
        assert [g for _, g in got] == [g for _, g in expected]
        correct += min(range(len(got)), key=lambda k: got[k][0]) == doc["target"]
    assert run.results["lmm_synthetic_vqa_mc"]["acc,none"] == pytest.approx(correct / len(docs))


def test_tasks_of_the_multi_image_mixture_carry_every_image(tmp_path):
    from dataclasses import replace

    from lmm.data.synthetic import PRESETS, generate
    from lmm.interop.lmms_eval_tasks import doc_to_visual

    generate(
        tmp_path / "mix",
        replace(PRESETS["multi_image"], train=20, val=4, test=30, shard_size=1000),
        train_tokenizer=False,
    )
    counts = write_tasks(tmp_path / "mix", tmp_path / "tasks")
    assert (
        counts["lmm_synthetic_two_image"] > 0
        and "lmm_synthetic_two_image" in (tmp_path / "tasks" / "lmm_synthetic.yaml").read_text()
    )
    docs = [
        json.loads(line) for line in (tmp_path / "tasks" / "lmm_synthetic_two_image.jsonl").read_text().splitlines()
    ]
    assert all(len(doc_to_visual(doc)) == 2 == doc["question"].count("<image>") for doc in docs)
    vqa = [json.loads(line) for line in (tmp_path / "tasks" / "lmm_synthetic_vqa.jsonl").read_text().splitlines()]
    assert all(len(doc_to_visual(doc)) == 1 for doc in vqa)


def test_a_bad_model_argument_fails_the_command(lmms_eval_run):
    """lmms-eval prints an Exception from a model and exits 0; the plugin's own errors end the
    command in one line with a non-zero status."""
    import torch

    from lmm.interop.lmms_eval_model import LmmModel

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(
        SystemExit,
        match=r"^\[lmm\] lmms-eval --model lmm: ValueError: device=cuda asked for, but this machine has no CUDA",
    ):
        LmmModel(pretrained=str(lmms_eval_run.model_dir), device="cuda")
