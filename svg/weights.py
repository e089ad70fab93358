"""The weight files the perceptual metrics need (the LPIPS backbones, the FVD I3D): where each is published and its
checksum, where it is looked for (a path the user gives, else torch's cache, ``$TORCH_HOME/hub/checkpoints``, where
torchvision keeps the same files) and fetching it into that cache on first use. A file that cannot be had is an
SvgError naming it, its URL and its checksum: never a skipped metric, never a number from other weights unsaid.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from svg.errors import SvgError, first_line


@dataclass(frozen=True)
class Digests:
    sha256: str
    git_sha1: str
    """The git blob id, what ``git hash-object FILE`` prints."""


@dataclass(frozen=True)
class WeightFile:
    """A published weight file."""

    name: str
    """Its name in torch's cache."""
    url: str
    what: str
    flag: str
    """The evaluate.py option that gives it by path."""
    sha256_prefix: str | None = None
    """torchvision's files carry the first digits of their SHA-256 in their name (what torch.hub checks)."""
    git_sha1: str | None = None
    """For a file published in a git repository: its blob id there."""

    @property
    def checksum(self) -> str:
        if self.sha256_prefix:
            return f"sha256 {self.sha256_prefix}..."
        return f"git blob sha1 {self.git_sha1} (git hash-object)"

    def matches(self, d: Digests) -> bool:
        if self.sha256_prefix:
            return d.sha256.startswith(self.sha256_prefix)
        return d.git_sha1 == self.git_sha1


ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "the LPIPS AlexNet backbone (torchvision's ImageNet weights)",
    "--metrics.lpips_weights",
    sha256_prefix="7be5be79",
)
VGG16 = WeightFile(
    "vgg16-397923af.pth",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "the LPIPS VGG16 backbone (torchvision's ImageNet weights)",
    "--metrics.lpips_weights",
    sha256_prefix="397923af",
)
# StyleGAN-V published it on Dropbox (dropbox.com/s/ge9e5ujwgetktms); this copy, pinned to a commit, has a checksum.
I3D = WeightFile(
    "i3d_torchscript.pt",
    "https://github.com/JunyaoHu/common_metrics_on_video_quality/raw/5f751734ce9cef4cd2dddb235726b75dff62a387/"
    "fvd/styleganv/i3d_torchscript.pt",
    "the FVD I3D (StyleGAN-V's TorchScript Kinetics-400 I3D)",
    "--metrics.i3d",
    git_sha1="93daef59c7ae0e9e8f76225521407e60cbafa6aa",
)


@dataclass(frozen=True)
class Weights:
    """A weight file found: where, how (given, cache or fetched), its SHA-256, and whether it is the published file
    (a given file need not be: any file of the same interface is used, and the results say which it was)."""

    path: Path
    source: str
    sha256: str
    published: bool

    def stamp(self) -> dict:
        return {"file": str(self.path), "source": self.source, "sha256": self.sha256, "published": self.published}


def digests(path: Path) -> Digests:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return Digests(sha256.hexdigest(), sha1.hexdigest())


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find(spec: WeightFile, given: str | None) -> Weights:
    """The file at ``given``; else the published file in torch's cache, fetched there first when missing. A file in
    the cache must match the published checksum."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise SvgError(f"{spec.flag} {path}: no such file ({spec.what}: {spec.url}, {spec.checksum})")
        d = digests(path)
        return Weights(path, "given", d.sha256, spec.matches(d))
    path, source = cache_dir() / spec.name, "cache"
    if not path.is_file():
        _fetch(spec, path)
        source = "fetched"
    d = digests(path)
    if not spec.matches(d):
        raise SvgError(
            f"{path}: not the published {spec.name} ({spec.checksum} expected, got sha256 {d.sha256[:16]}...); "
            f"delete it to fetch it again, or pass your own file with {spec.flag}"
        )
    return Weights(path, source, d.sha256, True)


def find_all(wanted: list[tuple[WeightFile, str | None]]) -> list[Weights]:
    """``find`` for each; every file that cannot be had named in one error."""
    found, missing = [], []
    for spec, given in wanted:
        try:
            found.append(find(spec, given))
        except SvgError as e:
            missing.append(str(e))
    if missing:
        raise SvgError("; ".join(missing))
    return found


def _fetch(spec: WeightFile, path: Path) -> None:
    """Download into the cache under a temporary name, checked before it takes the file's name."""
    part = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(part), progress=True)
    except OSError as e:  # offline, refused, HTTP errors, a read-only cache: URLError and HTTPError are OSErrors
        part.unlink(missing_ok=True)
        reason = first_line(e)
        raise SvgError(
            f"{spec.name} ({spec.what}) is not in {path.parent} and cannot be fetched ({reason}); "
            f"download {spec.url} ({spec.checksum}) into that folder, or pass it with {spec.flag} PATH"
        ) from None
    d = digests(part)
    if not spec.matches(d):
        part.unlink()
        raise SvgError(f"{spec.url}: the download is not the published {spec.name} ({spec.checksum} expected)")
    os.replace(part, path)
