import copy

import pytest
import torch

from svg.config import ConfigError, Model, load_experiment
from svg.models import SVG
from svg.models.encoders import ARCHITECTURES, ConditionMaps
from svg.models.reference import reference_step

SMALL = {"g_dim": 16, "z_dim": 4, "rnn_size": 16}


def small_model(encoder: str, **kw) -> SVG:
    return SVG(Model(encoder=encoder, channels=8, **SMALL, **kw))


@pytest.mark.parametrize("encoder", ["vgg64", "dcgan64"])
def test_encoder_decoder_shapes(encoder):
    enc, dec = ARCHITECTURES[encoder]
    e, d = enc(16, 8), dec(16, 8)
    h, skips = e(torch.rand(3, 3, 64, 64))
    assert h.shape == (3, 16)
    assert [s.shape[-1] for s in skips] == ([64, 32, 16, 8] if encoder == "vgg64" else [32, 16, 8, 4])
    out = d(h, skips)
    assert out.shape == (3, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("encoder", ["vgg64", "dcgan64"])
@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_training_step_and_predict_shapes(encoder, teacher_forcing):
    model = small_model(encoder)
    x, c = torch.rand(6, 2, 3, 64, 64), torch.randn(6, 2, 7)
    res = model.training_step(x, c, n_past=2, teacher_forcing=teacher_forcing, eps=torch.randn(5, 2, 4))
    assert res.pred.shape == (5, 2, 3, 64, 64)
    assert res.kld_per_dim.shape == (4,)
    assert res.mse.requires_grad and res.kld.requires_grad
    model.eval()
    pred = model.predict(x[:2], torch.randn(10, 2, 7), n_past=2)
    assert pred.shape == (8, 2, 3, 64, 64)


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _fast_step(model, x, c, eps, teacher_forcing):
    """The model's training step and its gradients."""
    fast = model.training_step(x, c, 2, teacher_forcing, eps)
    (fast.nll + 0.5 * fast.kld).backward()
    return fast, _grads(model)


def _both_steps(model, x, c, eps, teacher_forcing):
    fast, fast_grads = _fast_step(model, x, c, eps, teacher_forcing)
    model.zero_grad()
    ref = reference_step(model, x, c, 2, teacher_forcing, eps)
    (ref.nll + 0.5 * ref.kld).backward()
    return fast, fast_grads, ref, _grads(model)


def _relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    diff = sum(((p - q).double() ** 2).sum() for p, q in zip(a, b, strict=True))
    return (diff / sum((q.double() ** 2).sum() for q in b)).sqrt().item()


@pytest.mark.parametrize("encoder", ["dcgan64", "vgg64"])
@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize("prior", ["fixed", "learned"])
@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_fast_step_matches_the_per_frame_reference(encoder, teacher_forcing, prior, last_frame_skip):
    """Batching encoder/decoder over time must not change the computation: in float64 loss and every
    gradient agree to 1e-9; in fp32 the loss agrees to 1e-5."""
    torch.manual_seed(0)
    model = small_model(encoder, prior=prior, last_frame_skip=last_frame_skip)
    x, c, eps = torch.rand(5, 4, 3, 64, 64), torch.randn(5, 4, 7), torch.randn(4, 4, 4)
    fast, _, ref, _ = _both_steps(model, x, c, eps, teacher_forcing)
    torch.testing.assert_close(fast.mse, ref.mse, rtol=1e-5, atol=0)
    torch.testing.assert_close(fast.kld, ref.kld, rtol=1e-5, atol=0)

    model.double().zero_grad()
    fast, fast_grads, ref, ref_grads = _both_steps(model, x.double(), c.double(), eps.double(), teacher_forcing)
    torch.testing.assert_close(fast.mse, ref.mse, rtol=1e-12, atol=0)
    torch.testing.assert_close(fast.pred, ref.pred, rtol=1e-9, atol=1e-12)
    assert _relative_error(fast_grads, ref_grads) < 1e-9


@pytest.mark.parametrize(("teacher_forcing", "bound"), [(True, 1e-4), (False, 5e-3)])
def test_fast_step_fp32_gradients_are_float64_s_to_rounding(teacher_forcing, bound):
    """In fp32 the light model's gradients are within rounding of the same step in float64, which equals the
    per-frame reference to 1e-9 (above): fp32 loses nothing but rounding, on any CPU and thread count, while
    the same step under bf16 autocast is off by 4e-2 to 6e-2. Teacher forced the rounding stays near 1e-6;
    free running feeds each prediction back in, which amplifies it to 5.5e-4 with the AVX512/AMX kernels
    (1.6e-6 with AVX2), so its bound sits ten times above that and ten times below bf16."""
    torch.manual_seed(0)
    model = small_model("dcgan64", prior="learned")
    exact = copy.deepcopy(model).double()
    x, c, eps = torch.rand(6, 8, 3, 64, 64), torch.randn(6, 8, 7), torch.randn(5, 8, 4)
    _, fast_grads = _fast_step(model, x, c, eps, teacher_forcing)
    _, exact_grads = _fast_step(exact, x.double(), c.double(), eps.double(), teacher_forcing)
    assert _relative_error(fast_grads, exact_grads) < bound


@pytest.mark.parametrize("encoder", ["dcgan64", "vgg64"])
@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize(
    ("decoder_condition", "composite", "spots", "shifted", "transforms"),
    [
        (True, False, False, False, 0),
        (False, True, False, False, 0),
        (True, True, True, False, 0),
        (False, True, True, True, 0),
        (False, True, True, True, 2),
    ],
)
def test_fast_step_matches_the_reference_with_the_departures(
    encoder, teacher_forcing, decoder_condition, composite, spots, shifted, transforms
):
    torch.manual_seed(0)
    departures = {
        "decoder_condition": decoder_condition,
        "composite": composite,
        "position_spots": spots,
        "shifted_copy": shifted,
        "copy_transforms": transforms,
    }
    model = small_model(encoder, prior="learned", **departures).double()
    if transforms:  # away from the identity, so the transforms' own gradients are compared too
        with torch.no_grad():
            model.copy_transforms.to_theta.weight.normal_(0, 0.05)
    x, c, eps = torch.rand(5, 3, 3, 64, 64).double(), torch.randn(5, 3, 7).double(), torch.randn(4, 3, 4).double()
    fast, fast_grads, ref, ref_grads = _both_steps(model, x, c, eps, teacher_forcing)
    torch.testing.assert_close(fast.pred, ref.pred, rtol=1e-9, atol=1e-12)
    assert _relative_error(fast_grads, ref_grads) < 1e-9


def test_condition_maps_tile_the_condition_beside_pixel_centre_coordinates():
    maps = ConditionMaps(3)(torch.zeros(2, 5, 4, 8), torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.25, 0.0]]))
    assert maps.shape == (2, 5, 4, 8)
    torch.testing.assert_close(maps[1, :3, 2, 5], torch.tensor([0.0, 0.25, 0.0]))  # the condition everywhere
    torch.testing.assert_close(maps[0, 3, 0], torch.linspace(-7 / 8, 7 / 8, 8))  # x: pixel centres in (-1, 1)
    torch.testing.assert_close(maps[0, 4, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # y, top to bottom
    assert ConditionMaps(0).channels == 0


def test_position_spots_peak_where_the_end_effector_is_and_learn_the_map():
    """x, y = 0.5, -0.25 is pixel (48, 24) at 64 px: the spots peak on the four pixel centres around it, the
    narrow one sharper; the image map starts as the identity on x, y and gets a gradient."""
    maps = ConditionMaps(7, tiled=False, position=slice(4, 7))
    assert maps.channels == 2
    cond = torch.tensor([[0.3, 0.1, 0.0, 1.0, 0.5, -0.25, 0.9]])
    spots = maps(torch.zeros(1, 8, 64, 64), cond)
    assert spots.shape == (1, 2, 64, 64)
    for spot in spots[0]:
        top = spot.flatten().topk(4).indices
        assert sorted(divmod(int(i), 64) for i in top) == [(23, 47), (23, 48), (24, 47), (24, 48)]
    assert spots[0, 0, 24, 56] < spots[0, 1, 24, 56]  # 8 px away: the wide spot is brighter there
    spots.sum().backward()
    assert maps.to_image.weight.grad.abs().sum() > 0 and maps.log_width.grad.abs().sum() > 0
    with_tiles = ConditionMaps(7, tiled=True, position=slice(4, 7))
    assert with_tiles.channels == 7 + 2 + 2


def test_position_spots_need_the_position_in_the_condition():
    with pytest.raises(ConfigError, match=r"model.position_spots.*data.conditions = 'action'"):
        load_experiment("cpu", {"model.position_spots": True, "data.conditions": "action"})


def test_the_decoder_sees_the_condition_only_when_asked():
    """With model.decoder_condition the decoded frame depends on c_t for the same code and skips; without,
    c_t reaches the frame only through the predictor."""
    torch.manual_seed(0)
    for decoder_condition in (False, True):
        model = small_model("dcgan64", decoder_condition=decoder_condition).eval()
        h, skips = model.encoder(torch.rand(2, 3, 64, 64))
        c = torch.randn(2, 7)
        a, b = model.decode(h, skips, c), model.decode(h, skips, c + 1.0)
        assert torch.allclose(a, b) is not decoder_condition


@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_a_composite_decoder_whose_mask_is_one_copies_the_frame_its_skips_come_from(last_frame_skip):
    """mask * frame + (1 - mask) * painting: with the mask saturated at 1 every prediction is the last context
    frame (or, with last_frame_skip, the latest input: again that frame, copied forward); with the mask at 0 it
    is the painting; a new model's mask starts at sigmoid(2)."""
    torch.manual_seed(0)
    model = small_model("dcgan64", composite=True, last_frame_skip=last_frame_skip).double()
    final = model.decoder.blocks[-1][0]
    assert final.bias[3].item() == 2.0
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 60.0]))  # paint grey, mask sigmoid(60) = 1 in float64
    x, c = torch.rand(6, 2, 3, 64, 64).double(), torch.randn(6, 2, 7).double()
    model.eval()
    pred = model.predict(x, c, n_past=3)  # predictions come back as float32
    torch.testing.assert_close(pred, x[2].float().expand_as(pred), rtol=0, atol=1e-7)
    final.bias.data[3] = 0.0  # mask 0.5: halfway between grey and the frame, halved again each step when it is fed back
    halvings = torch.arange(1, 4.0) if last_frame_skip else torch.ones(3)
    expected = 0.5 + (x[2].float() - 0.5) / 2 ** halvings.view(3, 1, 1, 1, 1)
    torch.testing.assert_close(model.predict(x, c, n_past=3), expected, rtol=0, atol=1e-6)
    final.bias.data[3] = -60.0  # mask 0: the painting alone
    torch.testing.assert_close(model.predict(x, c, n_past=3), torch.full_like(pred, 0.5), rtol=0, atol=1e-7)


def test_a_shifted_copy_carries_the_frame_along_with_the_arm():
    """With the mask and the moving share saturated at 1, every prediction is the last context frame moved by the
    arm's displacement since it: x from 0 to 0.25 is 8 px right at 64 px, x back to 0 is the frame as it was; the
    columns the shift uncovers repeat the edge. A new model's moving share starts at sigmoid(-2)."""
    torch.manual_seed(0)
    model = small_model("dcgan64", composite=True, position_spots=True, shifted_copy=True).double().eval()
    final = model.decoder.blocks[-1][0]
    assert final.bias[4].item() == -2.0
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 60.0, 60.0]))
    x, c = torch.rand(5, 2, 3, 64, 64).double(), torch.zeros(5, 2, 7).double()
    c[2:4, :, 4] = 0.25  # the arm 8 px right of where it was in the last context frame, then back
    pred = model.predict(x, c, n_past=2)
    last = x[1].float()
    for step in (0, 1):
        torch.testing.assert_close(pred[step, ..., 8:], last[..., :-8], rtol=0, atol=1e-6)
        torch.testing.assert_close(pred[step, ..., :8], last[..., :1].expand(-1, -1, -1, 8), rtol=0, atol=1e-6)
    torch.testing.assert_close(pred[2], last, rtol=0, atol=1e-6)


def test_copy_transforms_carry_the_frame_as_each_transform_moves_it():
    """With the mask and every share saturated at 1, the prediction is the last transform's copy of the last context
    frame: a translation of -0.25 in x samples each pixel 8 px to its left at 64 px, so the frame moves 8 px right
    and the uncovered columns repeat the edge. New transforms are the identity: they copy the frame as it is."""
    torch.manual_seed(0)
    model = small_model("dcgan64", composite=True, copy_transforms=2).double().eval()
    x, c = torch.rand(4, 2, 3, 64, 64).double(), torch.randn(4, 2, 7).double()
    last = x[1].float()
    moved = model.copy_transforms(x[1], torch.randn(2, 16).double())
    torch.testing.assert_close(moved, x[1][:, None].expand(-1, 2, -1, -1, -1), rtol=0, atol=1e-12)
    final = model.decoder.blocks[-1][0]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 60.0, 60.0, 60.0]))
        model.copy_transforms.to_theta.bias[6 + 2] = -0.25  # the second transform's x translation
    pred = model.predict(x, c, n_past=2)
    for step in (0, 1):
        torch.testing.assert_close(pred[step, ..., 8:], last[..., :-8], rtol=0, atol=1e-6)
        torch.testing.assert_close(pred[step, ..., :8], last[..., :1].expand(-1, -1, -1, 8), rtol=0, atol=1e-6)


def test_copy_transforms_need_a_composite_decoder():
    with pytest.raises(ConfigError, match=r"model.copy_transforms = 2 .* needs model.composite"):
        load_experiment("seed", {"model.copy_transforms": 2})


def test_a_shifted_copy_needs_a_composite_decoder_with_spots():
    with pytest.raises(ConfigError, match=r"model.shifted_copy.*model.composite and model.position_spots"):
        load_experiment("cpu", {"model.shifted_copy": True, "model.position_spots": False})


def test_predictor_batchnorm_is_an_option_on_in_the_seed_off_in_svg():
    from svg.config import load_experiment

    def has_batchnorm(preset: str) -> bool:
        model = SVG.for_experiment(load_experiment(preset))
        return any(isinstance(m, torch.nn.BatchNorm1d) for m in model.predictor.modules())

    assert has_batchnorm("seed") and not has_batchnorm("svg")


def test_context_frames_are_ground_truth_without_teacher_forcing():
    """With n_past=3 and no teacher forcing, step 2 still reads ground truth x_1, not its prediction."""
    torch.manual_seed(0)
    model = small_model("dcgan64")
    x, c, eps = torch.rand(5, 2, 3, 64, 64), torch.randn(5, 2, 7), torch.randn(4, 2, 4)
    a = model.training_step(x, c, 3, False, eps).pred
    b = model.training_step(x, c, 3, True, eps).pred
    torch.testing.assert_close(a[:2], b[:2])  # steps 1, 2 see only ground truth either way
    assert not torch.allclose(a[3], b[3])  # step 4 reads the model's own x̂_3


@pytest.mark.parametrize("last_frame_skip", [False, True])
def test_predictions_decode_with_the_skips_of_the_last_context_frame(last_frame_skip):
    """The seed code's off-by-one took skips from x[n_past-2]; here every predicted frame is decoded with
    the skips of x[n_past-1] (or, with last_frame_skip, of the frame just predicted)."""
    torch.manual_seed(0)
    model = small_model("dcgan64", last_frame_skip=last_frame_skip).eval()
    x, c, n_past = torch.rand(3, 2, 3, 64, 64), torch.randn(7, 2, 7), 3
    received, decode = [], model.decoder.forward
    model.decoder.forward = lambda g, skips, cond=None: received.append(skips[0]) or decode(g, skips, cond)
    pred = model.predict(x, c, n_past)
    with torch.no_grad():
        expected = [model.encoder(x[n_past - 1])[1][0]] + [model.encoder(p)[1][0] for p in pred[:-1]]
    assert len(received) == 4
    for step, got in enumerate(received):
        torch.testing.assert_close(got, expected[step if last_frame_skip else 0])
    assert not torch.allclose(received[0], model.encoder(x[n_past - 2])[1][0].detach())


def test_predict_is_reproducible_with_a_seeded_generator():
    model = small_model("dcgan64", prior="learned").eval()
    x, c = torch.rand(2, 2, 3, 64, 64), torch.randn(6, 2, 7)
    a = model.predict(x, c, 2, generator=torch.Generator().manual_seed(3))
    b = model.predict(x, c, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_learned_prior_sees_the_condition_of_the_step_it_predicts():
    """[h_{t-1}, c_t]: changing only c_t changes the prior at step t (and so the KL), not earlier steps."""
    torch.manual_seed(0)
    model = small_model("dcgan64", prior="learned")
    x, c, eps = torch.rand(4, 2, 3, 64, 64), torch.randn(4, 2, 7), torch.zeros(3, 2, 4)
    other = c.clone()
    other[3] += 1.0
    with torch.no_grad():
        a = model.training_step(x, c, 2, True, eps).kl_step_dim
        b = model.training_step(x, other, 2, True, eps).kl_step_dim
    torch.testing.assert_close(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])


def test_free_bits_clamp_the_objective_per_dimension_not_the_reported_kl():
    from svg.step import sequence_loss

    torch.manual_seed(0)
    model = small_model("dcgan64")
    x, c, eps = torch.rand(4, 2, 3, 64, 64), torch.randn(4, 2, 7), torch.zeros(3, 2, 4)
    res = model.training_step(x, c, 2, True, eps)
    plain_loss = sequence_loss(res, 0.5)
    floor = res.kl_step_dim.detach().max().item() + 1.0  # above every dimension's KL: all clamped
    loss = sequence_loss(res, 0.5, free_bits=floor)
    expected = res.mse + 0.5 * floor * res.kl_step_dim.numel()
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the clamped KL passes no gradient: what is left is the reconstruction's
    clamped = model.posterior.mu.weight.grad.clone()
    model.zero_grad()
    sequence_loss(model.training_step(x, c, 2, True, eps), 0.0).backward()
    torch.testing.assert_close(clamped, model.posterior.mu.weight.grad)
    torch.testing.assert_close(plain_loss, res.mse + 0.5 * res.kld)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_fast_step_matches_the_reference_with_a_learned_likelihood(likelihood):
    torch.manual_seed(0)
    model = small_model("dcgan64", prior="learned", likelihood=likelihood).double()
    x, c, eps = torch.rand(5, 3, 3, 64, 64).double(), torch.randn(5, 3, 7).double(), torch.randn(4, 3, 4).double()
    fast, fast_grads, ref, ref_grads = _both_steps(model, x, c, eps, teacher_forcing=False)
    torch.testing.assert_close(fast.nll, ref.nll, rtol=1e-12, atol=0)
    assert _relative_error(fast_grads, ref_grads) < 1e-9
