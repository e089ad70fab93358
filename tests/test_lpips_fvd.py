"""LPIPS and FVD: the real loading and scoring paths on networks of the real interfaces that the tests make (a
random-weight AlexNet/VGG16 backbone in torchvision's format, a tiny TorchScript I3D), the Frechet distance against
closed forms and scipy, the weight files (given, cached, fetched, missing), the protocol stamp, the CLI."""

import hashlib
import json
import urllib.error
from dataclasses import asdict, fields, replace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision
from test_evaluate import CPU, HORIZON, N_PAST, TINY, CopyLast, batches, evaluate_cli, tiny

from svg.config import Model, load_experiment
from svg.data import ensure_synthetic
from svg.errors import SvgError
from svg.evaluation import Networks, best_of_n, evaluate, summarize
from svg.fvd import I3D_CHUNK, frechet_distance, i3d_input, load_i3d
from svg.models import SVG
from svg.perceptual import heads_file, load_lpips
from svg.protocols import PROTOCOLS, FvdSettings, LpipsSettings
from svg.step import to_model_layout
from svg.weights import ALEXNET, I3D, digests, find

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # the stand-in I3D is TorchScript

ALEX_TAPS = (1, 4, 7, 9, 11)
"""torchvision AlexNet ``features`` indices whose outputs (the ReLUs) LPIPS compares."""
VGG_TAPS = (3, 8, 15, 22, 29)
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The test machine's two cores are shared: one thread avoids OpenMP spinning against other jobs."""


def save_backbone(path, features: torch.nn.Sequential):
    """A backbone file as torchvision publishes it (``features.N.weight``, ...), without the classifier LPIPS never
    reads (233 MB of it for AlexNet)."""
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory):
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    return save_backbone(tmp_path_factory.mktemp("lpips") / "alexnet-random.pth", features), features


class TinyI3D(torch.nn.Module):
    """The interface of StyleGAN-V's i3d_torchscript.pt: (N, 3, T, 224, 224) in [-1, 1] with rescale, resize and
    return_features as keywords; (N, D) features, or softmax probabilities without return_features. It refuses other
    shapes and values outside [-1, 1], and rescale or resize change what it computes, as they do in the real one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 4, kernel_size=(2, 8, 8), stride=(1, 8, 8))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[3] != 224 or x.shape[4] != 224:
            raise ValueError("expected videos of shape (N, 3, T, 224, 224)")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise ValueError("expected values in [-1, 1]")
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = x.flip(3)
        h = torch.relu(self.conv(x))
        features = torch.cat(
            [h.mean((2, 3, 4)), h.amax((2, 3, 4)), x.mean((1, 3, 4)).diff(dim=1).abs().mean(1, True)], 1
        )
        return features if return_features else torch.softmax(features, 1)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("i3d") / "tiny_i3d.pt"
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def reference_lpips(features: torch.nn.Sequential, taps, net: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out from its definition: (N, 3, H, W) in [0, 1] -> (N,)."""
    heads = torch.load(heads_file(net), map_location="cpu", weights_only=True)
    x, y = ((2 * a - 1) - SHIFT) / SCALE, ((2 * b - 1) - SHIFT) / SCALE
    total = torch.zeros(a.shape[0])
    for i, layer in enumerate(features):
        x, y = layer(x.clone()), layer(y.clone())  # clone: torchvision's ReLUs work in place
        if i in taps:
            fx, fy = (f / (f.square().sum(1, keepdim=True) + 1e-8).sqrt() for f in (x, y))
            weight = heads[f"lin{taps.index(i)}.model.1.weight"].view(1, -1, 1, 1)
            total += ((fx - fy).square() * weight).sum(1).mean((1, 2))
    return total


# -- LPIPS --------------------------------------------------------------------------------------------------------


def test_lpips_is_the_definition_per_frame_and_zero_for_identical_frames(alexnet):
    path, features = alexnet
    lpips = load_lpips("alex", path, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 2, 3, 64, 64, generator=g), torch.rand(3, 2, 3, 64, 64, generator=g)
    pred[0] = target[0] + 0.02 * torch.randn(2, 3, 64, 64, generator=g)  # close frames score low
    got = lpips.per_frame(pred, target)
    assert got.shape == (3, 2) and got.dtype == torch.float32
    with torch.no_grad():
        want = reference_lpips(features, ALEX_TAPS, "alex", pred.clamp(0, 1).flatten(0, 1), target.flatten(0, 1))
    torch.testing.assert_close(got.flatten(), want, rtol=1e-4, atol=1e-6)
    assert (got[0] < got[1:].min()).all()
    assert torch.equal(lpips.per_frame(target, target), torch.zeros(3, 2))


def test_lpips_vgg_loads_its_own_layers(tmp_path):
    torch.manual_seed(2)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    lpips = load_lpips("vgg", save_backbone(tmp_path / "vgg.pth", features), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 1, 3, 64, 64, generator=g), torch.rand(1, 1, 3, 64, 64, generator=g)
    with torch.no_grad():
        want = reference_lpips(features, VGG_TAPS, "vgg", a[0], b[0])
    torch.testing.assert_close(lpips.per_frame(a, b).flatten(), want, rtol=1e-4, atol=1e-6)


def test_a_file_that_is_not_the_backbone_is_refused_naming_it(tmp_path, alexnet):
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    for name in ("wrong.pth", "junk.pth"):
        with pytest.raises(SvgError, match=f"LPIPS backbone {tmp_path / name}: ") as e:
            load_lpips("alex", tmp_path / name, torch.device("cpu"))
        assert "\n" not in str(e.value)
    with pytest.raises(SvgError, match="not torchvision's vgg weights"):
        load_lpips("vgg", alexnet[0], torch.device("cpu"))


def test_best_of_n_by_lpips_takes_the_lowest():
    values = torch.tensor([[[0.25, 0.5], [0.75, 0.5]], [[0.5, 0.625], [0.25, 0.0]]])  # (N=2, T=2, S=2)
    assert best_of_n(values, frames=1, lower=True).tolist() == [[0.25, 0.5], [0.75, 0.5]]  # sample 0 for both
    assert best_of_n(values, frames=2, lower=True).tolist() == [[0.5, 0.625], [0.25, 0.0]]  # sample 1 for both


# -- FVD ----------------------------------------------------------------------------------------------------------


def exact_gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n features whose sample mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: covariance I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_is_the_closed_form_on_known_gaussians_and_matches_scipy():
    d = 6
    m1, m2 = torch.arange(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    a, b = torch.linspace(0.5, 3, d, dtype=torch.float64), torch.linspace(2, 0.1, d, dtype=torch.float64)
    x, y = exact_gaussian(50, m1, torch.diag(a), 0), exact_gaussian(80, m2, torch.diag(b), 1)
    closed = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()  # commuting covariances
    assert frechet_distance(x, y) == pytest.approx(closed.item(), rel=1e-10)

    g = torch.Generator().manual_seed(3)
    ra, rb = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = ra @ ra.T + 0.1 * torch.eye(d), rb @ rb.T + 0.1 * torch.eye(d)
    x, y = exact_gaussian(40, m1, s1, 2), exact_gaussian(40, m2, s2, 4)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    scipy_form = (m1 - m2).square().sum().item() + np.trace(s1.numpy() + s2.numpy() - 2 * root.real)
    assert frechet_distance(x, y) == pytest.approx(scipy_form, rel=1e-9)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)


def test_fvd_of_a_set_against_itself_is_zero():
    features = torch.randn(256, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    assert abs(frechet_distance(features, features)) < 1e-12 * torch.cov(features.T).trace().item()
    with pytest.raises(ValueError, match="two features per set"):
        frechet_distance(features[:1], features)


def test_i3d_receives_224_videos_in_minus_one_to_one_with_its_keywords(i3d_file):
    i3d = load_i3d(i3d_file, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    video = torch.rand(5, I3D_CHUNK + 3, 3, 64, 64, generator=g)  # (T, B, C, H, W): two chunks
    video[0, 0] = 1.5  # a prediction outside [0, 1] is clipped first
    x = i3d_input(video)
    assert x.shape == (I3D_CHUNK + 3, 3, 5, 224, 224) and x.min() >= -1 and x.max() <= 1
    frame = F.interpolate(video[2, 4:5].clamp(0, 1), size=(224, 224), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(x[4, :, 2], frame * 2 - 1)
    reference = torch.jit.load(str(i3d_file))
    want = reference(x, rescale=False, resize=False, return_features=True).double()
    got = i3d.features(video)
    assert got.dtype == torch.float64 and got.shape == (I3D_CHUNK + 3, 9)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, reference(x).double())  # the probabilities are not the features


def test_an_i3d_that_fails_or_is_not_torchscript_is_one_line_naming_it(tmp_path, i3d_file):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SvgError, match=f"I3D {tmp_path / 'junk.pt'}: not a TorchScript file"):
        load_i3d(tmp_path / "junk.pt", torch.device("cpu"))
    i3d = load_i3d(i3d_file, torch.device("cpu"))
    with pytest.raises(SvgError, match=r"failed on videos of shape \(2, 3, 4, 224, 224\) \(.*expected videos") as e:
        i3d.module = torch.jit.script(Refuses())
        i3d.features(torch.rand(4, 2, 3, 64, 64))
    assert "\n" not in str(e.value)


class Refuses(torch.nn.Module):
    def forward(self, x: torch.Tensor, rescale: bool, resize: bool, return_features: bool) -> torch.Tensor:
        raise ValueError("expected videos of another size")


# -- both through evaluate ----------------------------------------------------------------------------------------


def test_evaluate_scores_lpips_and_fvd_beside_copy_last(alexnet, i3d_file):
    nets = Networks(load_lpips("alex", alexnet[0], CPU.device), load_i3d(i3d_file, CPU.device), video_frames=4)
    ev = evaluate(CopyLast(Model(**TINY)), batches(), N_PAST, 2, CPU, 0, networks=nets)
    assert ev.lpips.shape == (2, HORIZON, 6) and ev.copy_last_lpips.shape == (HORIZON, 6)
    assert ev.videos.real.shape == ev.videos.sample.shape == ev.videos.copy_last.shape == (6, 9)
    s = summarize(ev, frames=4)
    h = s.headline
    assert h.lpips.mean == h.copy_last_lpips.mean == h.lpips_best_of_n.mean > 0.001  # the model is the baseline
    assert s.fvd == s.copy_last_fvd > 0 and s.per_frame.lpips == s.per_frame.copy_last_lpips
    assert s.long_horizon.lpips.mean == pytest.approx(sum(s.per_frame.lpips.mean) / HORIZON, abs=1e-5)
    assert s.metrics == ("psnr", "ssim", "lpips") and s.to_json()["lpips_best_of_n_per_frame"]
    x, _ = to_model_layout(*batches()[0], CPU)  # the real videos: the context frames, then the first 4 predicted
    torch.testing.assert_close(ev.videos.real[:3], nets.i3d.features(x[: N_PAST + 4]))

    s = summarize(evaluate(tiny(), batches(), N_PAST, 3, CPU, 0, networks=nets), frames=4)
    assert s.headline.lpips_best_of_n.mean < s.headline.lpips.mean and s.fvd != s.copy_last_fvd
    without = summarize(evaluate(tiny(), batches(), N_PAST, 3, CPU, 0), frames=4)
    assert without.headline.lpips is None and without.fvd is None
    assert without.headline.psnr == s.headline.psnr  # nothing else moves


# -- weight files -------------------------------------------------------------------------------------------------


def test_a_given_file_is_used_and_said_not_to_be_the_published_one(tmp_path, i3d_file):
    found = find(I3D, str(i3d_file))
    assert found.source == "given" and not found.published
    assert found.sha256 == hashlib.sha256(i3d_file.read_bytes()).hexdigest()
    with pytest.raises(SvgError, match=f"--metrics.i3d {tmp_path / 'none.pt'}: no such file .*{I3D.git_sha1}"):
        find(I3D, str(tmp_path / "none.pt"))


def test_the_cache_holds_only_checked_files_and_a_fetch_is_checked_before_it_lands(tmp_path, monkeypatch, i3d_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    fetched = []

    def download(url, dst, progress=True):
        fetched.append(url)
        (tmp_path / "torch" / "hub" / "checkpoints" / dst.split("/")[-1]).write_bytes(i3d_file.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(SvgError, match="the download is not the published i3d_torchscript.pt"):
        find(I3D, None)
    assert fetched == [I3D.url] and not list(cache.iterdir())  # nothing unchecked is left behind

    ours = replace(I3D, git_sha1=digests(i3d_file).git_sha1)  # as if the stand-in were the published file
    found = find(ours, None)
    assert (found.path, found.source, found.published) == (cache / "i3d_torchscript.pt", "fetched", True)
    assert find(ours, None).source == "cache" and len(fetched) == 2  # fetched once
    with pytest.raises(SvgError, match=f"{cache / 'i3d_torchscript.pt'}: not the published i3d_torchscript.pt"):
        find(I3D, None)  # a cached file that fails the checksum is refused, not used


def test_git_blob_digest_is_what_git_hash_object_prints(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    assert digests(tmp_path / "f").git_sha1 == "ce013625030ba8dba906f756967f9e9ca394464a"


# -- protocols and the CLI ----------------------------------------------------------------------------------------


def test_the_bair_fvd_protocol_and_the_settings_stamped_beside_each_metric():
    p = PROTOCOLS["bair-fvd"]
    assert (p.n_past, p.frames, p.horizon, p.samples, p.sequences) == (1, 15, 15, 1, 256)
    assert p.metrics == ("psnr", "ssim", "lpips", "fvd") and p.lpips_net == "alex"
    assert all(q.metrics == ("psnr", "ssim") and q.sequences is None for n, q in PROTOCOLS.items() if n != "bair-fvd")
    fvd = asdict(FvdSettings(videos=256, frames=16, context_frames=1))
    assert (
        [f.name for f in fields(FvdSettings)]
        == list(fvd)
        == [
            "videos",
            "frames",
            "context_frames",
            "samples_per_video",
            "resolution",
            "resize",
            "i3d",
            "distance",
        ]
    )
    assert fvd["resolution"] == 224 and fvd["samples_per_video"] == 1 and "return_features=True" in fvd["i3d"]
    assert list(asdict(LpipsSettings("alex"))) == ["net", "heads", "backbone", "resolution", "frames", "best_of_n"]


@pytest.fixture(scope="module")
def one_frame_checkpoint(tmp_path_factory):
    """An untrained smoke-sized model on 1 given frame (what bair-fvd asks for), on 4 synthetic test sequences."""
    tmp = tmp_path_factory.mktemp("bair-fvd")
    root = ensure_synthetic(tmp / "data", 1, 1, 4, seed=0, workers=1)
    exp = load_experiment("smoke", {"data.root": str(root), "train.n_past": 1})
    torch.manual_seed(0)
    path = tmp / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": SVG.for_experiment(exp).state_dict(), "config": exp.model_dump(mode="json")}, path)
    return path


def test_evaluate_without_the_weights_offline_exits_2_naming_each_file(
    one_frame_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    args = [str(one_frame_checkpoint), "--out", str(tmp_path / "r.json"), "--tracking", "disabled", "--no-progress"]
    assert evaluate_cli()([*args, "--metrics", "lpips,fvd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evaluate.py: ") and "Traceback" not in err
    for expected in (
        ALEXNET.name,
        ALEXNET.url,
        "sha256 7be5be79",
        I3D.name,
        I3D.url,
        I3D.git_sha1,
        "--metrics.lpips_weights",
        "--metrics.i3d",
        "name resolution",
    ):
        assert expected in err, expected
    assert not (tmp_path / "r.json").exists()
    assert evaluate_cli()([*args, "--protocol", "bair-fvd", "--metrics.i3d", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err  # the protocol asks for both; the given path is named as given
    assert err.count("\n") == 1 and f"--metrics.i3d {tmp_path / 'no.pt'}: no such file" in err and ALEXNET.name in err
    with pytest.raises(SystemExit):
        evaluate_cli()([*args, "--metrics", "psnr,lpipz"])
    assert "lpipz is not among psnr,ssim,lpips,fvd" in capsys.readouterr().err


def test_evaluate_with_the_weights_by_path_writes_lpips_and_fvd_with_their_protocol(
    one_frame_checkpoint, tmp_path, alexnet, i3d_file, capsys
):
    weights = ["--metrics.lpips_weights", str(alexnet[0]), "--metrics.i3d", str(i3d_file)]
    common = [str(one_frame_checkpoint), "--tracking", "disabled", "--no-progress", *weights]
    out = tmp_path / "custom.json"
    argv = [*common, "--out", str(out), "--metrics", "lpips,fvd", "--samples", "2", "--horizon", "10", "--frames", "8"]
    assert evaluate_cli()(argv) == 0
    r = json.loads(out.read_text())
    for key in ("lpips", "lpips_ci95", "lpips_best_of_n", "copy_last_lpips", "fvd", "copy_last_fvd", "psnr", "ssim"):
        assert isinstance(r[key], float), key
    assert len(r["lpips_per_frame"]) == len(r["copy_last_lpips_per_frame"]) == 10
    assert r["lpips"] == pytest.approx(sum(r["lpips_per_frame"][:8]) / 8, abs=1e-5)
    assert r["lpips_best_of_n"] <= r["lpips"] and r["lpips"] != r["copy_last_lpips"] and r["fvd"] > 0
    assert {"lpips", "lpips_best_of_n", "copy_last_lpips"} <= r["long_horizon"].keys()
    stamp = r["protocol"]
    assert stamp["name"] == "custom" and stamp["metrics"] == ["psnr", "ssim", "lpips", "fvd"]
    assert stamp["lpips"]["net"] == "alex" and stamp["lpips"]["weights"] == {
        "file": str(alexnet[0]),
        "source": "given",
        "sha256": hashlib.sha256(alexnet[0].read_bytes()).hexdigest(),
        "published": False,
    }
    assert {k: stamp["fvd"][k] for k in ("videos", "frames", "context_frames", "samples_per_video", "resolution")} == {
        "videos": 4,
        "frames": 1 + 8,
        "context_frames": 1,
        "samples_per_video": 1,
        "resolution": 224,
    }
    assert stamp["fvd"]["weights"]["file"] == str(i3d_file) and not stamp["fvd"]["weights"]["published"]
    assert "LPIPS" in capsys.readouterr().out

    out = tmp_path / "bair.json"  # the protocol picks the metrics, 1 sample and 15 frames; 4 videos is not its 256
    assert evaluate_cli()([*common, "--out", str(out), "--protocol", "bair-fvd"]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"]["name"] == "custom" and r["protocol"]["fvd"]["frames"] == 16 and r["n_samples"] == 1
    assert r["lpips_best_of_n"] == r["lpips"] and len(r["lpips_per_frame"]) == 15
    plain = tmp_path / "plain.json"
    assert evaluate_cli()([*common, "--out", str(plain), "--limit", "2", "--horizon", "10"]) == 0
    assert "lpips" not in json.loads(plain.read_text()) and "metrics" not in json.loads(plain.read_text())["protocol"]
