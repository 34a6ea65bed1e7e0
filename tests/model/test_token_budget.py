"""`connector.tokens=N`: every connector emits the budget it is given, grid connectors by average
pooling of their own token grid, sequence connectors by their query count; AnyRes and describe
count the budgeted tokens; budgets that cannot be met stop in one line."""

import pytest
import torch
import torch.nn.functional as F

from lmm.analysis.describe import describe
from lmm.build.model import build_model
from tests.conftest import compose_config
from tests.model.test_connectors import CONNECTORS, TINY

GRID = {"identity", "linear", "mlp", "pixel_shuffle"}  # the model pools their grid
OWN = {"qformer", "qformer_instruct", "qformer_tiny", "resampler", "resampler_tiny", "perceiver", "c_abstractor", "ldp"}


def tiny_model(connector: str, *overrides: str):
    """The tiny tower (64 patches, width 128) and LLM, with `connector` at its TINY sizes."""
    sizes = [f"connector.{k}={v}" for k, v in TINY.get(connector, {}).items() if k != "vocab_size"]
    if connector == "identity":
        sizes.append("llm.model.arch.hidden_size=128")
    torch.manual_seed(0)
    return build_model(compose_config([f"connector={connector}", *sizes, *overrides]), image_token_id=3)


def encode(model, pixels):
    extra = {}
    if model.connector.uses_instruction:
        extra = dict(instruction_ids=torch.ones(2, 4, dtype=torch.long), instruction_mask=torch.ones(2, 4))
    with torch.no_grad():
        return model.encode_images(pixels, **extra)


def test_every_connector_is_classified():
    assert GRID | OWN == set(CONNECTORS), "a new connector: say how it reaches a budget"


@pytest.mark.parametrize("budget", [16, 4])
@pytest.mark.parametrize("name", CONNECTORS)
def test_every_connector_emits_its_budget(name, budget):
    model = tiny_model(name, f"connector.tokens={budget}")
    pixels = torch.randn(2, 3, 64, 64)
    assert model.num_image_tokens == budget
    assert encode(model, pixels).shape == (2, budget, model.llm.config.hidden_size)
    assert (model.pooled_side is not None) == (name in GRID and model.connector.num_tokens(64) != budget)
    if name in OWN:  # the connector itself makes N: no pooling, parameters sized for N queries
        assert model.connector.num_tokens(64) == budget
        assert sum(p.numel() for p in model.connector.parameters()) == model.connector.formula_parameters()


@pytest.mark.parametrize("name", sorted(GRID - {"pixel_shuffle"}))
def test_a_grid_budget_is_the_average_of_neighbouring_tokens(name):
    """64 patches (8×8) to 16 tokens: each token is the mean of a 2×2 block of the unpooled ones,
    and the connector's weights are the same as without a budget."""
    full, pooled = tiny_model(name), tiny_model(name, "connector.tokens=16")
    pooled.load_state_dict(full.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    tokens = encode(full, pixels)  # [2, 64, D]
    grid = tokens.transpose(1, 2).reshape(2, -1, 8, 8)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # [2, 16, D]
    torch.testing.assert_close(encode(pooled, pixels), expected)
    assert full.state_dict().keys() == pooled.state_dict().keys()


def test_budgets_that_cannot_be_met_stop_in_one_line():
    with pytest.raises(ValueError, match=r"connector.tokens=15 must be a positive square"):
        tiny_model("mlp", "connector.tokens=15")
    with pytest.raises(ValueError, match=r"connector.tokens=100 exceeds the 64 tokens MLPConnector makes"):
        tiny_model("mlp", "connector.tokens=100")
    with pytest.raises(ValueError, match=r"connector.tokens=12 must be a positive square"):
        tiny_model("resampler_tiny", "connector.tokens=12")
    for bad in ("-4", "0", "1.5", "many"):  # checked before any connector is built, whatever its kind
        with pytest.raises(ValueError, match=r"must be a positive whole number of visual tokens, or null"):
            tiny_model("qformer_tiny", f"connector.tokens={bad}")


def test_a_budget_is_per_view_under_anyres():
    """Each AnyRes view is pooled to the budget; the image's count (unpadded tiles, newlines)
    follows from the pooled grid, and the model's visual tokens fill exactly that many placeholders."""
    model = tiny_model("mlp", "connector.tokens=16", "vision.image_aspect=anyres", "anyres.grid_pinpoints=[[128,128]]")
    assert model.num_image_tokens == 16 and model.token_grid_side == 4
    # 128×128: overview (16) + 2×2 tiles of 4×4 = an 8×8 grid with a newline per row (8 × 9)
    assert model.image_tokens(128, 128) == 16 + 8 * 9
    pixels = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        visual = model._visual_tokens(pixels, torch.tensor([[128, 128]]), None, None)
    assert visual.shape[0] == model.image_tokens(128, 128)


def test_describe_states_the_budget(capsys):
    summary = describe(compose_config(["vision=clip_l14_336", "llm=vicuna7b", "connector.tokens=144"]))
    assert summary["visual_tokens"] == 144 and summary["patches"] == 576
    assert "connector.tokens=144: the connector's 576 grid tokens average-pooled" in capsys.readouterr().out
    summary = describe(
        compose_config(["vision=clip_l14_336", "llm=vicuna7b", "connector=qformer", "connector.tokens=64"])
    )
    assert summary["visual_tokens"] == 64


def test_every_design_of_the_design_space_sweep_has_its_budget():
    """make design-space's grid (conf/sweep/design_space.yaml): each design composes with the study's
    experiment and emits its token budget, whatever the connector and the resolution."""
    import itertools

    import yaml

    from tests.conftest import CONF

    params = yaml.safe_load((CONF / "sweep" / "design_space.yaml").read_text())["hydra"]["sweeper"]["params"]
    axes = {key: str(value).split(",") for key, value in params.items() if key != "seed"}
    assert axes["connector.tokens"] == ["64", "16"] and len(axes["vision"]) == 2 and len(axes["connector"]) == 4
    for values in itertools.product(*axes.values()):
        cfg = compose_config([f"{key}={value}" for key, value in zip(axes, values, strict=True)])
        assert cfg.eval.blind is True and cfg.trainer.max_steps == 160
        with torch.device("meta"):
            model = build_model(cfg, image_token_id=3, load_weights=False)
        assert model.num_image_tokens == int(cfg.connector.tokens), values
