from dataclasses import dataclass, field

import pytest

from distill.config import ConfigError, load_config, save_config
from scenes.world import WorldConfig


@dataclass
class Cfg:
    steps: int = 3  # a field
    lr: float = 1e-3
    name: str = "x"
    world: WorldConfig = field(default_factory=WorldConfig)


def test_layers_apply_in_order(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("steps: 7\nworld:\n  image_size: 64\n")
    cfg = load_config(Cfg, [str(y), "steps=9"])
    assert cfg.steps == 9 and cfg.world.image_size == 64 and cfg.lr == 1e-3
    path = save_config(cfg, tmp_path / "run")
    assert "image_size: 64" in path.read_text()
    assert load_config(Cfg, [str(path)]) == cfg


@pytest.mark.parametrize(
    "args,key",
    [
        (["stepz=3"], "stepz"),
        (["world.fov=3"], "world.fov"),
        (["steps=abc"], "steps"),
        (["lr=fast"], "lr"),
    ],
)
def test_bad_key_or_type_names_the_key(args, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Cfg, args)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("world:\n  imagesize: 3\n")
    with pytest.raises(ConfigError, match=r"imagesize.*bad\.yaml|bad\.yaml.*imagesize"):
        load_config(Cfg, [str(y)])


def test_stray_argument_and_missing_file():
    with pytest.raises(ConfigError, match="neither a config file"):
        load_config(Cfg, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, ["nope.yaml"])


def test_empty_override_is_the_empty_string():
    assert load_config(Cfg, ["name="]).name == ""
