"""Configs, identities and overrides saved by earlier versions read back in today's layout."""

from lmm.core.upgrade import upgrade_config, upgrade_overrides
from tests.conftest import compose_config


def test_anyres_keys_move_from_vision_to_their_own_node():
    old = {
        "vision": {"_target_": "lmm.model.vision.TimmVisionTower", "tile_pool": 2, "anyres_overview": False},
        "stage": {"_target_": "lmm.train.stage.Stage", "optim": {"lr": 1.0}},
    }
    new = upgrade_config(old)
    assert new["vision"] == {"_target_": "lmm.model.vision.TimmVisionTower"}
    assert new["anyres"] == {"tile_pool": 2, "overview": False}
    assert new["stage"] == {"_target_": "lmm.build.stage.Stage", "optim": {"lr": 1.0}}
    assert old["vision"]["tile_pool"] == 2  # the input is left as it was
    today = {"vision": {"image_size": 64}, "anyres": {"tile_pool": 1}}
    assert upgrade_config(today) == today


def test_a_run_trained_with_an_anyres_override_replays_it_in_todays_key():
    replayed = upgrade_overrides(["vision.tile_pool=2", "+vision.max_tiles=4", "vision=tiny", "seed=1"])
    assert replayed == ["anyres.tile_pool=2", "+anyres.max_tiles=4", "vision=tiny", "seed=1"]
    cfg = compose_config(["vision.image_aspect=anyres", *[o.lstrip("+") for o in replayed]])
    assert cfg.anyres.tile_pool == 2 and cfg.anyres.max_tiles == 4 and "tile_pool" not in cfg.vision
