"""Writing results: the data reach the disk before the new name points at them; a failed write leaves the old file."""
import os

import pytest

from microdit.files import atomic_folder, atomic_write, model_identity, write_json


def test_a_write_is_synced_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("rename", str(dst))), real_replace(src, dst)))
    write_json({"step": 1}, tmp_path / "stats.json")
    (what, written), rename, folder = events
    assert what == "sync" and os.path.basename(written).startswith(".stats.json.")
    assert rename == ("rename", str(tmp_path / "stats.json")) and folder == ("sync", str(tmp_path))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    write_json({"step": 1}, tmp_path / "stats.json")

    def half_written(tmp):
        open(tmp, "w").write('{"st')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "stats.json", half_written)
    assert os.listdir(tmp_path) == ["stats.json"] and (tmp_path / "stats.json").read_text().startswith('{\n  "step": 1')


def test_a_replaced_folder_is_kept_until_its_successor_is_whole(tmp_path):
    out = tmp_path / "images"
    atomic_folder(out, lambda folder: (folder / "old.png").write_text("old"))

    def fail(folder):
        (folder / "new.png").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_folder(out, fail, replace=True)
    assert [p.name for p in tmp_path.iterdir()] == ["images"] and [p.name for p in out.iterdir()] == ["old.png"]
    atomic_folder(out, lambda folder: (folder / "new.png").write_text("new"), replace=True)
    assert [p.name for p in out.iterdir()] == ["new.png"]


def test_a_local_model_is_known_by_its_contents_and_a_hub_id_by_its_name(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    (vae / "weights.safetensors").write_bytes(b"1234")
    before = model_identity(str(vae))
    assert model_identity(f"hf:{vae}") == before and set(before) == {"config.json", "weights.safetensors"}
    (vae / "weights.safetensors").write_bytes(b"5678")  # retrained in place
    assert model_identity(str(vae)) != before
    assert model_identity("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"


def test_written_files_get_the_umask_s_permissions_not_private_ones(tmp_path):
    before = os.umask(0o022)
    try:
        write_json({"fid": 12.7}, tmp_path / "fid.json")
    finally:
        os.umask(before)
    assert (tmp_path / "fid.json").stat().st_mode & 0o777 == 0o644


def test_exports_and_the_tiny_vae_folder_get_the_umask_s_permissions(tmp_path):
    # issue 29: safetensors writes its files 0600 whatever the temporary file was, and mkdtemp makes folders 0700,
    # so a shared project folder could not read the exports or the preset's VAE
    from microdit.checkpoint import save_dit
    from microdit.models.dit import create_dit
    from microdit.tiny_vae import build_tiny_vae, save_trained_vae

    before = os.umask(0o022)
    try:
        save_dit(create_dit("MicroDiT_Nano_2", input_size=8), tmp_path / "final.safetensors", "MicroDiT_Nano_2")
        save_trained_vae(build_tiny_vae(widths=(8, 8)), {"steps": 0}, tmp_path / "vae")
    finally:
        os.umask(before)
    assert (tmp_path / "final.safetensors").stat().st_mode & 0o777 == 0o644
    vae = tmp_path / "vae"
    assert vae.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in vae.iterdir()} == {
        "config.json": 0o644, "diffusion_pytorch_model.safetensors": 0o644, "train_stats.json": 0o644}
    assert sorted(os.listdir(tmp_path)) == ["final.safetensors", "vae"]  # no staging left behind
