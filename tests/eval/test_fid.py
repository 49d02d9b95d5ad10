import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from eval_helpers import noise_images, png_bytes, smooth_images, write_folder, write_shards
from microdit.errors import UserError
from microdit.eval import fid as fidmod
from microdit.eval.features import LABEL, load_efficientnet_lite0, preprocess
from microdit.eval.reference_stats import center_crop, compute_reference_stats

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's Grace Hopper portrait


def test_efficientnet_lite0_is_the_pretrained_network():
    import matplotlib.cbook

    model = load_efficientnet_lite0()  # strict load of the wheel's 296-entry state dict
    image = np.array(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    logits = model(preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float()))
    assert MILITARY_UNIFORM in logits.topk(5).indices[0].tolist()


@pytest.mark.slow
def test_frechet_distance_through_cleanfid_custom_extractor(tmp_path, efficientnet_extractor):
    from cleanfid import fid

    smooth = write_folder(tmp_path / "smooth", smooth_images(12, 32, seed=0))
    same = write_folder(tmp_path / "same", smooth_images(12, 32, seed=0))
    noise = write_folder(tmp_path / "noise", noise_images(12, 32, seed=1))
    kwargs = dict(mode="clean", custom_feat_extractor=efficientnet_extractor.fn, device=torch.device("cpu"),
                  num_workers=0, verbose=False)
    identical = fid.compute_fid(str(smooth), str(same), **kwargs)
    different = fid.compute_fid(str(smooth), str(noise), **kwargs)
    assert abs(identical) < 1e-3 * different
    assert different > 1.0
    assert efficientnet_extractor.metric == LABEL and "FID" not in LABEL


def test_reference_stats_round_trip_from_shards(tmp_path, efficientnet_extractor):
    images = smooth_images(6, 40, seed=2) + noise_images(4, 40, seed=3)
    wds = write_shards(tmp_path / "wds", images, [f"c{i}" for i in range(10)])
    keys = {f"COCO_val2014_{i:012d}" for i in range(8)}
    out = tmp_path / "results" / "ref_32.npz"
    meta = compute_reference_stats(wds, out, efficientnet_extractor, "clean", 32, keys=keys)
    stats = fidmod.load_stats(out)
    assert meta["num_images"] == stats["num_images"] == 8
    assert stats["feature_extractor"] == efficientnet_extractor.name and stats["resolution"] == 32
    assert stats["mu"].shape == (1280,) and stats["sigma"].shape == (1280, 1280)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ref_32.npz"]  # scratch images removed
    # the same images as files give the same statistics: the crop happens on the fly in both cases
    crops = [center_crop(32)(image) for image in images[:8]]
    folder = write_folder(tmp_path / "crops", crops)
    mu, sigma = fidmod.statistics(fidmod.folder_features(folder, efficientnet_extractor))
    np.testing.assert_allclose(mu, stats["mu"], atol=1e-4)
    np.testing.assert_allclose(sigma, stats["sigma"], atol=1e-4)
    with pytest.raises(UserError, match="do not match"):
        fidmod.check_compatible(stats, efficientnet_extractor, "clean", 64, str(out))
    (tmp_path / "empty").mkdir()  # e.g. a download whose shards are unfinished: named, not numpy's error
    with pytest.raises(UserError, match="empty: 0 image files"):
        compute_reference_stats(tmp_path / "empty", tmp_path / "e.npz", efficientnet_extractor, "clean", 32)


def test_center_crop_geometry():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 10:70] = 255  # white well beyond the central square, so resampling at its edges stays outside
    crop = center_crop(16)(image)
    assert crop.shape == (16, 16, 3) and crop.min() == 255
    assert center_crop(16)(image.transpose(1, 0, 2)).shape == (16, 16, 3)


@pytest.fixture
def offline_inception(tmp_path, monkeypatch):
    """clean-fid's weights location moved into tmp_path, and every download refused."""
    target = tmp_path / "cache" / "inception-2015-12-05.pt"
    monkeypatch.setattr(fidmod, "inception_source", lambda mode: ("https://example.invalid/inception.pt", target))

    def refuse(url, dst, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return target


def test_missing_inception_offline_says_how_to_stage(offline_inception):
    with pytest.raises(UserError) as err:
        fidmod.build_extractor("inception", "clean", "cpu")
    message = str(err.value)
    assert "--inception-weights" in message and str(offline_inception) in message and "\n" not in message


def test_staged_inception_weights_are_copied_where_cleanfid_looks(tmp_path, offline_inception):
    staged = tmp_path / "staged.pt"
    staged.write_bytes(b"weights")
    assert fidmod.ensure_inception_weights("clean", staged) == offline_inception
    assert offline_inception.read_bytes() == b"weights"
    with pytest.raises(UserError, match="no such file"):
        offline_inception.unlink() or fidmod.ensure_inception_weights("clean", tmp_path / "absent.pt")


def test_bad_reference_images_are_counted_skips(tmp_path, efficientnet_extractor):
    # issue 29: one undecodable or oversized reference image stopped fid-stats with a traceback
    from microdit.data.shards import Sample, write_shard

    good = [png_bytes(image) for image in smooth_images(3, 40, seed=4)]
    samples = [Sample(f"ok{i}", data, "c", image_ext="png") for i, data in enumerate(good)]
    samples += [Sample("truncated", good[0][:60], "c", image_ext="png"),
                Sample("large", png_bytes(noise_images(1, 64, seed=5)[0]), "c", image_ext="png")]
    write_shard(tmp_path / "wds", 0, samples)
    keys = {"ok0", "ok1", "ok2", "truncated", "large"}
    meta = compute_reference_stats(tmp_path / "wds", tmp_path / "ref.npz", efficientnet_extractor, "clean", 32,
                                   keys=keys, max_pixels=40 * 40)
    assert meta["num_images"] == 3 and meta["skipped"] == {"bad_image": 1, "too_large": 1}
    folder = write_folder(tmp_path / "folder", smooth_images(2, 40, seed=6))
    (folder / "broken.png").write_bytes(good[1][:60])
    meta = compute_reference_stats(folder, tmp_path / "folder.npz", efficientnet_extractor, "clean", 32)
    assert meta["num_images"] == 2 and meta["skipped"] == {"bad_image": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "broken.png"]
