"""task=simulate: lmm's FSDP sharding on a fake world; the formula estimate, the scaling model,
the memory search, and one-line answers to bad input. (The equality with a real 2-process run
is in tests/train/test_fsdp.py, next to that run.)"""

import json

import pytest
import torch

from lmm.analysis.describe import meta_model
from lmm.analysis.simulate.fake_step import StepMeasurement, simulate_step
from lmm.analysis.simulate.hardware import GIB, GPU
from lmm.analysis.simulate.scaling import Allowance, predicted_peak, scale_point, scaling_table, wire_bytes
from lmm.analysis.simulate.task import SCALING_PLOT, SIMULATION, SIMULATION_TABLES, simulate
from lmm.train.memory import fsdp_memory_estimate
from tests.conftest import compose_config

# Vicuna-7B at full width, half its layers, 4 × 2048 tokens per GPU, no accumulation.
SEVEN_B_SHORT = [
    "trainer.devices=8",
    "llm.model.arch.num_hidden_layers=16",
    "data.batch_size=4",
    "stage.global_batch_size=32",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, checkpointing", [("llava15_7b", True), ("llava15_7b", False), ("llava15_7b_pretrain", False)]
)
def test_describe_formula_agrees_with_the_simulation_within_10_percent(experiment, checkpointing):
    cfg = compose_config([f"experiment={experiment}", f"activation_checkpointing={checkpointing}", *SEVEN_B_SHORT])
    measured = simulate_step(
        cfg,
        world=8,
        per_device_batch=4,
        sample_lengths=[2048],
        activation_checkpointing=checkpointing,
        accumulating=False,
    )
    formula = fsdp_memory_estimate(meta_model(cfg), cfg, world=8)
    # The sharded state is exact; the peak within 10%.
    assert formula["AdamW moments (sharded)"] == pytest.approx(measured.optimizer, rel=1e-3)
    assert formula["parameters (sharded)"] == pytest.approx(measured.parameters, rel=1e-3)
    assert formula["total"] == pytest.approx(measured.peak, rel=0.10)


def test_collectives_move_each_unit_and_each_gradient():
    """Tiny model, 2 fake ranks, fp32 reduce: the reduce-scatters carry every trainable
    parameter's gradient once; the all-gathers every parameter at least once (the forward), in bf16."""
    cfg = compose_config(["strategy=fsdp", "trainer.devices=2"])
    m = simulate_step(
        cfg,
        world=2,
        per_device_batch=4,
        sample_lengths=[int(cfg.data.max_length)],
        activation_checkpointing=False,
        accumulating=False,
    )
    model = meta_model(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    reduce_scatter = sum(m.collectives["reduce_scatter"].values())
    assert (
        trainable * 4 <= reduce_scatter <= trainable * 4 + 2 * 4 * len(list(model.parameters()))
    )  # dim-0 padding to 2
    assert sum(m.collectives["all_gather"].values()) >= total * 2
    assert m.collectives["reduce_scatter"]["vision"] == 0  # the frozen tower gets no gradient
    assert m.collectives["all_gather"]["vision"] > 0
    assert m.gradients == pytest.approx(trainable * 4 / 2, rel=0.01) and m.optimizer >= 2 * m.gradients
    assert m.flops > 0 and m.parameter_count == pytest.approx(total / 2, rel=0.01)


def measurement(**overrides) -> StepMeasurement:
    values = dict(
        world=8,
        per_device_batch=4,
        sample_lengths=[100],
        activation_checkpointing=True,
        accumulating=False,
        parameter_count=10,
        parameters=8 * GIB,
        gradients=8 * GIB,
        optimizer=16 * GIB,
        peak=40 * GIB,
        peak_breakdown={
            "Sharded Param": 8 * GIB,
            "OptState": 16 * GIB,
            "Activation": 12 * GIB,
            "Temp": 2 * GIB,
            "Unsharded Param": 2 * GIB,
        },
        collectives={"all_gather": {"llm": 10 * GIB}, "reduce_scatter": {"llm": 6 * GIB}, "all_reduce": {"llm": 0}},
        flops=4e15,
    )
    return StepMeasurement(**{**values, **overrides})


def test_scaling_model_on_a_known_measurement():
    m = measurement()
    # Sharded state (24 GiB at 8) ∝ 1/W, batch-sized bytes (14 GiB at 4) ∝ batch, the rest (2) fixed.
    assert predicted_peak(m, world=16, batch=2) == pytest.approx((12 + 2 + 7) * GIB)
    assert predicted_peak(m, world=8, batch=4, accumulating=True) == pytest.approx(48 * GIB)  # + the 8 GiB of gradients
    assert wire_bytes(m, world=8) == pytest.approx(7 / 8 * 16 * GIB)
    gpu = GPU(memory_gib=80, bf16_tflops=1000, nvlink_gbps=400, network_gbps=50, gpus_per_node=8)
    allowance = Allowance(allocator_overhead=0.0, context_gib=0.0, mfu=0.5, bus_efficiency=1.0)
    point = scale_point(m, world=8, global_batch=64, max_batch=4, gpu_name="g", gpu=gpu, allowance=allowance)
    assert (point.per_device_batch, point.accumulation) == (4, 2)
    assert point.compute_s == pytest.approx(2 * 4e15 / 5e14)  # two micro-steps of 4e15 FLOPs at 500 TFLOP/s
    assert point.comm_s == pytest.approx(2 * 7 / 8 * 16 * GIB / 400e9)
    assert point.step_s == point.compute_s and point.note == ""
    across_nodes = scale_point(
        measurement(flops=4e13), world=64, global_batch=64, max_batch=4, gpu_name="g", gpu=gpu, allowance=allowance
    )
    assert across_nodes.per_device_batch == 1 and across_nodes.comm_s == pytest.approx(63 / 64 * 16 * GIB / 50e9)
    assert across_nodes.note == "communication-bound"
    # 38 GiB: batch 1 × 8 accumulation (24 sharded + 8 live gradients + 2 fixed + 3.5 per sample) fits, batch 2 does
    # not.
    small = GPU(memory_gib=38, bf16_tflops=1000, nvlink_gbps=400, network_gbps=50)
    fitted = scale_point(m, world=8, global_batch=64, max_batch=4, gpu_name="s", gpu=small, allowance=allowance)
    assert (fitted.per_device_batch, fitted.accumulation, fitted.peak_gib) == (1, 8, pytest.approx(37.5))
    table = scaling_table(m, [8, 16, 128], 64, 4, {"g": gpu}, allowance)
    assert table[0].efficiency == 1.0 and table[1].efficiency <= 1.0
    assert table[2].step_s is None and "not a multiple of 128" in table[2].note


def test_simulate_task_writes_tables_and_answers_the_memory_question(tmp_path, capsys):
    common = [
        "task=simulate",
        "strategy=fsdp",
        "trainer.devices=2",
        "stage.global_batch_size=16",
        "data.batch_size=4",
        "simulate.world_sizes=[2,4,8,32]",
        f"simulate.out={tmp_path}",
    ]
    result = simulate(compose_config([*common, "simulate.gpu_memory_gib=1000"]))
    assert result["fit"].startswith(
        "fits 1000 GiB on 2 GPUs: data.batch_size=8 (accumulation 1)"
    )  # the rank's whole share
    saved = json.loads((tmp_path / SIMULATION).read_text())
    assert saved["measured"]["checkpointing"]["peak"] > 0 and saved["accumulation"] == 2
    assert {p["world"] for p in saved["scaling"]} == {2, 4, 8, 32}
    assert (tmp_path / SCALING_PLOT).read_bytes()[:4] == b"\x89PNG"
    tables = (tmp_path / SIMULATION_TABLES).read_text()
    assert "| total peak (tensors) |" in tables and "global batch 16 is not a multiple of 32 GPUs" in tables
    out = capsys.readouterr().out
    assert "activation checkpointing" in out and str(tmp_path / SIMULATION) in out
    tiny = simulate(compose_config([*common, "simulate.gpu_memory_gib=0.0001", "simulate.world_sizes=[2]"]))
    assert tiny["fit"].startswith("does not fit 0.0001 GiB on 2 GPUs at any batch")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.devices=3", "stage.global_batch_size=16"], "not a multiple of data.batch_size=4 × 3 device(s)"),
        (["strategy=auto"], "task=simulate simulates strategy=fsdp"),
        (["simulate.sample_lengths=[3]"], "simulate.sample_lengths holds 3"),
        (["simulate.mfu=0"], "simulate.mfu=0: must be a number > 0"),
    ],
)
def test_bad_input_gets_one_line(overrides, message):
    base = ["task=simulate", "strategy=fsdp", "trainer.devices=2", "data.batch_size=4", "stage.global_batch_size=16"]
    with pytest.raises(ValueError, match=None) as error:
        simulate(compose_config([*base, *overrides]))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not torch.distributed.is_initialized()  # nothing left behind


def test_docs_section_is_written_between_its_markers(tmp_path):
    from lmm.analysis.simulate.docs import BEGIN, END, write_section

    run = tmp_path / "docs" / "scale_out" / "llava15_13b"
    run.mkdir(parents=True)
    (run / SIMULATION_TABLES).write_text("| a | b |\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(f"intro\n{BEGIN}\nold tables\n{END}\noutro\n")
    write_section(page, [run])
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old tables" not in text
    assert "### llava15_13b" in text and "| a | b |" in text and f"(scale_out/llava15_13b/{SCALING_PLOT})" in text
    page.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        write_section(page, [run])
