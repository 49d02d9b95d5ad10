"""The data store's folder names: what decides a dataset's bytes names its folders, nothing else does."""
import copy
from pathlib import Path

import pytest
import yaml

from microdit.store import Store, part_range

REPO = Path(__file__).resolve().parents[2]


def tiny() -> dict:
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def keys(config: dict) -> dict:
    store = Store(config)
    return {"download": store.download_key("synthetic"), "mds": store.mds_key("synthetic"),
            "vae": store.vae_key(), "latents": store.latents_key("synthetic"),
            "eval latents": store.latents_key("synthetic_eval")}


def test_part_ranges_cover_the_items_in_order():
    assert [list(part_range(5, i, 3)) for i in range(3)] == [[0], [1, 2], [3, 4]]
    assert [i for p in range(4) for i in part_range(10, p, 4)] == list(range(10))
    with pytest.raises(ValueError):
        part_range(5, 3, 3)


# what a run changes besides its data: none of it names a store folder
NOT_DATA = [
    lambda c: c.update(run="ablation"),
    lambda c: c["stages"]["stage1"].update(set={"steps": 99}),
    lambda c: c["eval"].update(steps=5),
    lambda c: c["downloads"]["synthetic"].update(parts=2),  # parts split the work, not the bytes
    lambda c: c["downloads"]["synthetic"]["options"].update(processes=8),  # how fast, not what
    lambda c: c["latents"].update(gpus=0),
]

# (change, the keys it changes)
DATA = [
    # the tiny VAE is trained on this dataset: every latents it encodes change with it
    (lambda c: c["downloads"]["synthetic"]["options"].update(seed=5),
     {"download", "mds", "vae", "latents", "eval latents"}),
    (lambda c: c["datasets"]["synthetic"]["convert"].update(min_side=32), {"mds", "vae", "latents", "eval latents"}),
    (lambda c: c["datasets"]["synthetic_eval"]["convert"].update(min_side=32), {"eval latents"}),
    (lambda c: c["vae"]["train"].update(steps=5), {"vae", "latents", "eval latents"}),
    (lambda c: c.update(seed=1), {"vae", "latents", "eval latents"}),  # the tiny VAE's training seed
    (lambda c: c["latents"].update(seed=1), {"latents", "eval latents"}),
    (lambda c: c["latents"].update(gpus=1), {"latents", "eval latents"}),  # bf16 on GPUs, fp32 on the CPU
    (lambda c: c["text_encoder"].update(name="hf:elsewhere"), {"latents", "eval latents"}),
    (lambda c: c["text_encoder"].update(context_length=32), {"latents", "eval latents"}),  # caption tokens kept
]


@pytest.mark.parametrize("change", NOT_DATA)
def test_run_settings_keep_the_store_folders(change):
    config = tiny()
    before = keys(config)
    change(config)
    assert keys(config) == before


@pytest.mark.parametrize("change, changed", DATA)
def test_data_settings_get_folders_of_their_own(change, changed):
    config = tiny()
    before = keys(config)
    change(config)
    after = keys(config)
    assert {name for name in before if before[name] != after[name]} == changed


def test_paths_name_the_parts_and_default_to_results_store():
    config = tiny()
    config.pop("store")
    config["downloads"]["synthetic"]["parts"] = 3
    store = Store(config)
    assert store.download_part("synthetic", 3, 2) == (f"results/store/downloads/{store.download_key('synthetic')}"
                                                      "/parts3/2")
    assert store.latents_dir("synthetic") == f"results/store/latents/{store.latents_key('synthetic')}/parts3"
    assert store.latents_dir("synthetic_eval").endswith("/parts1")
    hub = copy.deepcopy(config)
    hub["vae"] = {"latent_channels": 4, "name": "some/vae"}
    assert Store(hub).latents_key("synthetic") != store.latents_key("synthetic")
    assert store.latents_key("synthetic").startswith("synthetic-")
