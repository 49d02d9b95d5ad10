"""A full disk in download, convert and precompute is one line naming the path and the cause, exit status 2."""
import errno
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from streaming.base.format.base.writer import JointWriter

from data_helpers import run
from microdit.cli import main


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write to an open file: no file name


@pytest.fixture(scope="module")
def wds_and_mds(tmp_path_factory):
    from microdit.data.convert import Rules, convert

    root = tmp_path_factory.mktemp("input")
    assert run(["download", "synthetic", "--out", str(root / "wds"), "--num-samples", "2", "--min-size", "24",
                "--max-size", "32"]) == 0
    convert(root / "wds", root / "mds", Rules(min_side=0, resize_to=0))
    return root / "wds", root / "mds"


@pytest.mark.parametrize("command", ["download", "convert", "precompute"])
def test_a_full_disk_is_one_line_naming_the_output(command, wds_and_mds, tiny_vae_dirs, tmp_path, monkeypatch,
                                                   capsys, isolated_streaming):
    wds, mds = wds_and_mds
    out = tmp_path / "out"
    argv = {"download": ["download", "synthetic", "--out", str(out), "--num-samples", "2"],
            "convert": ["convert", "--input", str(wds), "--out", str(out), "--min-side", "0"],
            "precompute": ["precompute", "--input", str(mds), "--out", str(out), "--vae", tiny_vae_dirs[4],
                           "--text-encoder", "minilm", "--resolutions", "16", "--max-length", "8"]}[command]
    # where the bytes meet the disk: download's tar members, convert's and precompute's MDS shard files
    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_full)
    monkeypatch.setattr(JointWriter, "flush_shard", disk_full)
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after precompute's progress bar
    assert last == (f"microdit {command}: error: {out}: no space left on device; free some space there (or write "
                    "elsewhere) and rerun")


def test_other_os_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/x")

    monkeypatch.setattr(tarfile.TarFile, "addfile", denied)
    with pytest.raises(PermissionError):
        main(["download", "synthetic", "--out", str(tmp_path / "out"), "--num-samples", "1"])


def can_mount_a_small_disk() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_mount_a_small_disk(), reason="needs unprivileged user and mount namespaces (unshare)")
def test_a_really_full_disk_is_one_line_too(tmp_path):
    """A 64 KiB tmpfs in a private mount namespace, filled by a real download."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && exec {sys.executable} -m microdit.cli download synthetic "
              f"--out {disk}/wds --num-samples 60 --shard-size 60 --min-size 64 --max-size 96")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"microdit download: error: {disk}/wds") and "no space left on device" in last
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not can_mount_a_small_disk(), reason="needs unprivileged user and mount namespaces (unshare)")
def test_a_full_disk_in_a_precompute_worker_is_one_line_too(wds_and_mds, tiny_vae_dirs, tmp_path):
    """Two worker processes write to a 16 KiB tmpfs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs {disk} && exec {sys.executable} -m microdit.cli precompute "
              f"--input {wds_and_mds[1]} --out {disk}/latents --vae {tiny_vae_dirs[4]} --text-encoder minilm "
              "--resolutions 16 --max-length 8 --processes 2")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"microdit precompute: error: {disk}/latents") and "no space left on device" in last, last
