"""Writing results: the data reach the disk before the new name points at them; a failed write leaves the old file."""
import os

import pytest

from microdit.files import atomic_write, model_identity, write_json


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
