"""The data store that runs share: where each download, MDS dataset, latents dataset and trained tiny VAE lives,
named by a short digest of what decides its bytes. Two run configs that agree on a dataset's settings find the same
folders (and so nothing to redo); one setting changed gives a folder of its own.

  <store>/downloads/<source>-<digest>/parts<n>/<i>/    part i of n: shards + download.json
  <store>/mds/<source>-<digest>/parts<n>/<i>/          that part filtered and resized (<i>.json: its counts)
  <store>/mds/<source>-<digest>/parts<n>/index.json    the parts as one MDS dataset (the VAE training reads it)
  <store>/latents/<source>-<digest>/parts<n>/<i>/      that part's latents
  <store>/latents/<source>-<digest>/parts<n>/index.json   the parts as one dataset: what training reads
  <store>/vae/vae-<digest>/                             the tiny preset's own VAE

The part count is in the folder name rather than the digest: parts split the work, not the bytes (precompute seeds
each input shard by its name), so `parts: 2` reads the same samples in the same order as `parts: 1`.

Imported by the Snakefile at parse time: standard library only.
"""
from microdit.files import fingerprint
from microdit.hub import pinned_name

DEFAULT_STORE = "results/store"
DIGEST_CHARS = 10
# download options that say how fast or from which (expiring) links the data comes, not what it is
SPEED_OPTIONS = ("processes", "threads", "timeout", "retries", "links")


def short_digest(settings) -> str:
    return fingerprint(settings)[:DIGEST_CHARS]


def part_range(count: int, part: int, parts: int) -> range:
    """Part `part` (0-based) of `parts` contiguous, near-equal ranges over `count` items, in order; the parts
    together are range(count) exactly."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: expected 0 <= part < parts")
    return range(part * count // parts, (part + 1) * count // parts)


class Store:
    """The store's folder names for one run config (the Snakefile's `config`, schema-checked)."""

    def __init__(self, config: dict):
        self.config = config
        self.root = config.get("store", DEFAULT_STORE).rstrip("/")

    # ------------------------------------------------------------------------------------------------ keys
    def download_key(self, name: str) -> str:
        spec = self.config["downloads"][name]
        options = {k: v for k, v in spec.get("options", {}).items() if k not in SPEED_OPTIONS}
        settings = {"source": spec["source"], "subset": spec.get("subset", "full"), "options": options}
        return f"{spec['source']}-{short_digest(settings)}"

    def mds_key(self, dataset: str) -> str:
        spec = self.config["datasets"][dataset]
        convert = {"clean_captions": False, **spec["convert"]}
        download = self.download_key(spec["download"])
        return f"{download.rsplit('-', 1)[0]}-{short_digest({'download': download, 'convert': convert})}"

    def latents_key(self, dataset: str) -> str:
        latents, mds = self.config["latents"], self.mds_key(dataset)
        settings = {"mds": mds, "vae": self.vae_identity(),
                    "text_encoder": pinned_name(self.config["text_encoder"]["name"],
                                                self.config["text_encoder"].get("revision")),
                    "context_length": self.config["text_encoder"]["context_length"],
                    "resolutions": sorted(latents["resolutions"]), "batch_size": latents["batch_size"],
                    "seed": latents["seed"],
                    # the VAE encodes in bf16 on GPUs and fp32 on the CPU (microdit.data.precompute)
                    "device": "gpu" if latents.get("gpus", 0) else "cpu"}
        return f"{mds.rsplit('-', 1)[0]}-{short_digest(settings)}"

    def vae_identity(self):
        vae = self.config["vae"]
        if "train" in vae:
            return self.vae_key()
        return {"name": pinned_name(vae["name"], vae.get("revision")), "subfolder": vae.get("subfolder")}

    def vae_key(self) -> str:
        vae = self.config["vae"]
        train = {k: v for k, v in vae["train"].items() if k != "dataset"}
        settings = {"mds": self.mds_key(vae["train"]["dataset"]), "train": train,
                    "latent_channels": vae["latent_channels"], "seed": self.config["seed"]}
        return f"vae-{short_digest(settings)}"

    # ----------------------------------------------------------------------------------------------- parts
    def dataset_parts(self, dataset: str) -> int:
        return int(self.config["downloads"][self.config["datasets"][dataset]["download"]].get("parts", 1))

    # ----------------------------------------------------------------------------------------------- paths
    def download_part(self, download: str, parts, part) -> str:
        """The folder of part `part` of `parts` of a download (its shards and download.json)."""
        return f"{self.root}/downloads/{self.download_key(download)}/parts{parts}/{part}"

    def mds_dir(self, dataset: str) -> str:
        """A dataset's MDS images, its parts merged (index.json; the parts are its sub-folders)."""
        return f"{self.root}/mds/{self.mds_key(dataset)}/parts{self.dataset_parts(dataset)}"

    def latents_dir(self, dataset: str) -> str:
        """A dataset's latents, its parts merged (index.json; the parts are its sub-folders)."""
        return f"{self.root}/latents/{self.latents_key(dataset)}/parts{self.dataset_parts(dataset)}"

    def vae_dir(self) -> str:
        return f"{self.root}/vae/{self.vae_key()}"

    # ------------------------------------------------------------------------------- keys back to the config
    # (the rules' wildcards are constrained to these keys, so an unknown one never reaches them)
    def download_named(self, key: str) -> str:
        """A download of the config whose store key is `key` (any: they agree on what decides the bytes)."""
        return next(name for name in self.config["downloads"] if self.download_key(name) == key)

    def dataset_with_mds(self, key: str) -> str:
        return next(name for name in self.config["datasets"] if self.mds_key(name) == key)

    def dataset_with_latents(self, key: str) -> str:
        return next(name for name in self.config["datasets"] if self.latents_key(name) == key)

    def keys(self, kind: str) -> list[str]:
        """The config's keys of one kind (downloads, mds, latents), for the rules' wildcard constraints."""
        if kind == "downloads":
            return sorted({self.download_key(name) for name in self.config["downloads"]})
        key_of = self.mds_key if kind == "mds" else self.latents_key
        return sorted({key_of(name) for name in self.config["datasets"]})
