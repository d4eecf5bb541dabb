import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from recon.cameras import intrinsics, look_at, orbit_position
from recon.raster import rasterize
from scenes.data import WorldDataset, make_split
from scenes.nerf import load_nerf_folder, write_nerf_folder
from scenes.objects import make_object
from scenes.rig import make_rig
from scenes.samples import make_samples
from scenes.world import SPLIT_OFFSETS, SPLIT_SIZE, split_seed


def test_objects_are_deterministic_and_distinct(tiny_world):
    a, b = make_object(11, tiny_world), make_object(11, tiny_world)
    for k, v in a.as_dict().items():
        assert torch.equal(v, getattr(b, k)), k
    c = make_object(12, tiny_world)
    assert not torch.equal(a.means, c.means)
    assert a.count == tiny_world.gaussians
    assert a.means.norm(dim=1).max() <= tiny_world.object_radius + 1e-5


def test_splits_are_disjoint():
    ranges = sorted((off, off + SPLIT_SIZE) for off in SPLIT_OFFSETS.values())
    assert all(r0[1] <= r1[0] for r0, r1 in zip(ranges, ranges[1:]))
    assert split_seed("test", 0) == SPLIT_OFFSETS["test"]
    with pytest.raises(ValueError, match="unknown split"):
        split_seed("dev", 0)


def test_back_side_colours_are_independent_of_front(tiny_world):
    # two objects sharing shape but not colours cannot be made on purpose, so check the design
    # property directly: colours on the far side of the condition camera are not a function of
    # the near side across seeds (their correlation over many objects is weak).
    fronts, backs = [], []
    for s in range(40):
        g = make_object(s, tiny_world)
        x = g.means[:, 0]  # the condition camera sits on +x
        fronts.append(g.colors[x > 0.1].mean(0))
        backs.append(g.colors[x < -0.1].mean(0))
    f, b = torch.stack(fronts), torch.stack(backs)
    corr = torch.corrcoef(torch.cat([f, b], 1).T)[:3, 3:].diagonal()
    assert corr.abs().max() < 0.6


def test_camera_convention_opencv():
    vm = look_at(orbit_position(0, 0, 2.0))
    K = intrinsics(32, 32, 40.0)
    for point, check in [
        (torch.tensor([0.0, 0, 0]), lambda u, v: abs(u - 16) < 1e-4 and abs(v - 16) < 1e-4),
        (torch.tensor([0.0, 0, 0.3]), lambda u, v: v < 16),  # world up is image up (y down)
        (torch.tensor([0.0, 0.3, 0]), lambda u, v: u > 16),  # facing -x with z up, +y is right
    ]:
        pc = vm[:3, :3] @ point + vm[:3, 3]
        assert pc[2] > 0
        u, v = (K @ (pc / pc[2])).tolist()[:2]
        assert check(u, v), (point, u, v)


def test_samples_shapes(tiny_world):
    s = make_samples([1, 2], tiny_world)
    H = tiny_world.image_size
    assert s["cond"].shape == (2, 3, H, H)
    assert s["targets"].shape == (2, 4, 3, H, H)
    assert s["heldout"].shape[1] >= 8
    assert s["gaussians"].shape == (2, tiny_world.gaussians, 14)
    assert s["cond"].min() >= -1 and s["cond"].max() <= 1
    # white background in the corners
    assert torch.all(s["targets"][:, :, :, 0, 0] > 0.99)


def test_shards_round_trip_and_reject_other_world(tmp_path, tiny_world):
    man = make_split(tmp_path, "val", 5, tiny_world)
    ds = WorldDataset(tmp_path, "val")
    assert len(ds) == 5 and man["count"] == 5
    item = ds[3]
    direct = make_samples([split_seed("val", 3)], tiny_world)
    assert (item["targets"] - direct["targets"][0]).abs().max() <= 1 / 127.5 + 1e-6
    assert torch.equal(item["gaussians"], direct["gaussians"][0])
    batch = ds.batch([0, 2])
    assert batch["targets"].shape[0] == 2

    # a shard written by another world version is refused, naming the file
    shard = tmp_path / "val" / man["shards"][0]["file"]
    tensors = load_file(str(shard))
    save_file(tensors, str(shard), metadata={"world_id": "0000", "world_version": "0"})
    with pytest.raises(ValueError, match=r"shard from another world.*version 0"):
        WorldDataset(tmp_path, "val")

    # a manifest from another generator version is refused
    mpath = tmp_path / "val" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["world_version"] = 999
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="world version 999"):
        WorldDataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="distill data make"):
        WorldDataset(tmp_path, "test")


def test_nerf_folder_round_trip(tmp_path, tiny_world):
    g = make_object(3, tiny_world)
    rig = make_rig(tiny_world)
    vm = rig.heldout_viewmats[:4]
    K = rig.K.expand(4, 3, 3)
    H = tiny_world.image_size
    rgb, alpha, _ = rasterize(g, vm, K, H, H, background=torch.ones(3))
    images = (rgb * 2 - 1).permute(0, 3, 1, 2)
    write_nerf_folder(tmp_path / "obj", images, alpha.permute(0, 3, 1, 2), vm, rig.K)
    loaded = load_nerf_folder(tmp_path / "obj")
    assert torch.allclose(loaded.viewmats, vm, atol=1e-5)
    assert torch.allclose(loaded.Ks, K, atol=1e-4)
    assert (loaded.images - images).abs().max() < 3 / 255 * 2
    # re-rendering with the loaded (converted) cameras gives the same images
    rgb2, _, _ = rasterize(g, loaded.viewmats, loaded.Ks, H, H, background=torch.ones(3))
    assert torch.allclose(rgb2, rgb, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="transforms_train.json"):
        load_nerf_folder(tmp_path / "obj", split="train")


def test_eval_split_rejects_data_of_another_size(tmp_path, tiny_world):
    from scenes.data import open_eval_split

    make_split(tmp_path, "test", 2, tiny_world)
    ds = open_eval_split(tmp_path, "test", 2, tiny_world.image_size)
    assert len(ds) == 2 and ds.world == tiny_world
    with pytest.raises(ValueError, match=r"data is 16x16 pixels, the model works at 32x32"):
        open_eval_split(tmp_path, "test", 2, 32)


def test_target_elevations_of_the_wrong_length_are_a_clear_error():
    from scenes.rig import make_rig
    from scenes.world import WorldConfig, target_views

    cfg = WorldConfig(target_elevations=[20.0, -10.0])
    with pytest.raises(ValueError, match="target_elevations has 2 entries for 4 target_azimuths"):
        make_rig(cfg)
    per_view = WorldConfig(target_elevations=[20.0, -10.0, 20.0, -10.0])
    assert target_views(per_view)[1] == (90.0, -10.0)
    assert target_views(WorldConfig())[1] == (90.0, 20.0)
