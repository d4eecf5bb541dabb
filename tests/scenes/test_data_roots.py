"""The default data root keys its folder by the world: two worlds never share one folder, and
the default world of version 2 keeps data/world2 (existing data is not remade)."""

from pathlib import Path

import pytest

from scenes.data import DATA_ROOT, WorldDataset, open_split, resolve_root, world_root
from scenes.world import WorldConfig, world_id


def test_default_worlds_keep_their_folders_and_others_get_their_id():
    assert world_root(WorldConfig()) == "data/world2" == DATA_ROOT
    assert world_root(WorldConfig(version=1)) == "data/world"
    tiny = WorldConfig(version=1, image_size=16)
    assert world_root(tiny) == f"data/world1-{world_id(tiny)}"
    assert resolve_root("elsewhere", tiny) == "elsewhere"  # an explicit root is used as given
    assert resolve_root(DATA_ROOT, None) == DATA_ROOT  # no world known: the folder itself


def test_two_worlds_at_the_default_root_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    v1 = WorldConfig(version=1, image_size=16, gaussians=32)
    v2 = WorldConfig(version=2, image_size=16, gaussians=32)
    a = open_split(DATA_ROOT, "test", 1, v2)
    b = open_split(DATA_ROOT, "test", 1, v1)  # before: "data made with a different world"
    assert world_id(a.world) == world_id(v2) and world_id(b.world) == world_id(v1)
    folders = sorted(p.parent.parent.name for p in Path("data").glob("*/test/manifest.json"))
    assert folders == sorted(Path(world_root(w)).name for w in (v1, v2))
    assert len(WorldDataset(DATA_ROOT, "test", v1)) == 1


def test_an_explicit_root_of_another_world_is_still_refused(tmp_path):
    v1 = WorldConfig(version=1, image_size=16, gaussians=32)
    open_split(tmp_path, "test", 1, v1)
    with pytest.raises(ValueError, match="different world config"):
        WorldDataset(tmp_path, "test", WorldConfig(version=2, image_size=16, gaussians=32))
