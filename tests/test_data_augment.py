"""Worker transforms and device augmentation: shapes, ranges, determinism, recipe semantics."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from cvt_lab.data.device_augment import DeviceAugment
from cvt_lab.data.mixing import MixupCutmix, RandomErasing, smooth_one_hot
from cvt_lab.data.randaugment import OPS, RandAugment
from cvt_lab.data.transforms import EvalTransform, TrainTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DEIT = {"randaugment": {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5, "prob": 0.5},
        "erase_prob": 0.25, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_prob": 1.0,
        "mix_switch_prob": 0.5, "label_smoothing": 0.1}


def photo(w: int = 500, h: int = 375) -> Image.Image:
    g = torch.arange(w * h * 3, dtype=torch.int64).view(h, w, 3) % 251
    return Image.fromarray(g.to(torch.uint8).numpy(), "RGB")


def batch(b: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_train_transform_gives_uint8_crops_of_the_size_and_varies():
    t = TrainTransform(224, True, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    rng = random.Random(0)
    outs = [t(photo(), rng) for _ in range(3)]
    assert all(o.shape == (3, 224, 224) and o.dtype == torch.uint8 for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_eval_transform_is_deterministic_resize_then_centre_crop():
    img = photo()
    t = EvalTransform(224, 0.875)
    a, b = t(img), t(img)
    assert torch.equal(a, b) and a.shape == (3, 224, 224)
    # short side 375 -> 256 (224 / 0.875), long side 500 -> 341, then a centred 224 crop
    resized = img.resize((341, 256), Image.Resampling.BICUBIC)
    left, top = (341 - 224) // 2, (256 - 224) // 2
    expected = torch.from_numpy(__import__("numpy").asarray(resized.crop((left, top, left + 224, top + 224))).copy())
    assert torch.equal(a, expected.permute(2, 0, 1))
    assert EvalTransform(384, 1.0, warp=True)(img).shape == (3, 384, 384)


def test_eval_sizes_are_the_reference_resize_and_centre_crop():
    # timm and the original CvT code use torchvision: Resize(256) truncates the long side
    # (int(256 * long / short)) and CenterCrop rounds the offset (round((n - 224) / 2))
    t = EvalTransform(224, 0.875)
    assert t.plan(640, 427) == ((383, 256), (80, 16, 304, 240))  # 383.7 -> 383, not 384
    assert t.plan(427, 640) == ((256, 383), (16, 80, 240, 304))
    assert t.plan(1372, 1024) == ((343, 256), (60, 16, 284, 240))  # offset 59.5 -> 60, not 59


def test_device_augment_eval_normalises_and_keeps_hard_labels():
    aug = DeviceAugment(MEAN, STD, DEIT, num_classes=10)
    images, labels = batch(), torch.arange(8)
    x, targets, out = aug(images, labels, train=False)
    assert x.dtype == torch.float32 and x.shape == images.shape
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(targets, labels) and torch.equal(out, labels)


def test_deit_recipe_gives_soft_targets_with_smoothing_folded_in_once():
    torch.manual_seed(0)
    aug = DeviceAugment(MEAN, STD, DEIT, num_classes=10)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    x, targets, out = aug(batch(), labels, train=True)
    assert x.shape == (8, 3, 32, 32) and torch.equal(out, labels)
    assert targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    # labels i and 7 - i are mixed; every other class keeps exactly smoothing / C
    assert torch.allclose(targets[:, 8:], torch.full((8, 2), 0.01))
    assert (targets[torch.arange(8), labels] + targets[torch.arange(8), labels.flip(0)]).allclose(
        torch.full((8,), 1 - 0.1 + 0.02))


def test_ranks_augment_differently_yet_keep_the_global_rng_in_step():
    # DDP ranks share one global RNG state; each must still draw its own RandAugment ops,
    # Mixup/CutMix lambda and erasing boxes, and all must leave the global RNG alike
    aug = DeviceAugment(MEAN, STD, DEIT, num_classes=10)
    images, labels = batch(), torch.arange(8)
    outs, states = {}, {}
    for rank in (0, 1, 0):
        torch.manual_seed(3)
        outs.setdefault(rank, []).append(aug(images, labels, train=True, rank=rank))
        states.setdefault(rank, []).append(torch.get_rng_state())
    (x0, t0, _), (x0_again, t0_again, _) = outs[0]
    x1, t1, _ = outs[1][0]
    assert torch.equal(x0, x0_again) and torch.equal(t0, t0_again)  # deterministic per rank
    assert not torch.equal(x0, x1) and not torch.equal(t0, t1)
    assert torch.equal(states[0][0], states[1][0])


def test_basic_recipe_leaves_targets_hard_for_the_loss_to_smooth():
    aug = DeviceAugment(MEAN, STD, {"label_smoothing": 0.1}, num_classes=10)
    x, targets, _ = aug(batch(), torch.arange(8), train=True)
    assert targets.ndim == 1


def test_mixup_mixes_pixels_and_targets_by_the_same_lambda():
    torch.manual_seed(1)
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    x = torch.stack([torch.full((3, 8, 8), float(v)) for v in (0, 1, 2, 3)])
    labels = torch.tensor([0, 1, 2, 3])
    out, targets = mix(x, labels)
    lam = targets[0, 0]
    assert torch.allclose(targets.sum(1), torch.ones(4))
    assert torch.allclose(out[0], torch.full((3, 8, 8), float(3 * (1 - lam))), atol=1e-6)
    assert torch.allclose(targets[0, 3], 1 - lam)


def test_cutmix_target_weights_match_the_pasted_area():
    torch.manual_seed(2)
    mix = MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    x = torch.stack([torch.full((3, 16, 20), float(v)) for v in (0, 1, 2, 3)])
    for _ in range(5):
        out, targets = mix(x, torch.tensor([0, 1, 2, 3]))
        pasted = (out[1] == 2).float().mean()  # image 1 gets a box of image 2
        assert torch.allclose(targets[1, 2], pasted) and torch.allclose(targets[1, 1], 1 - pasted)
        assert torch.allclose(targets.sum(1), torch.ones(4))


def test_smooth_one_hot():
    t = smooth_one_hot(torch.tensor([2]), 4, 0.1)
    assert torch.allclose(t, torch.tensor([[0.025, 0.025, 0.925, 0.025]]))


def test_random_erasing_erases_one_box_within_the_area_range():
    torch.manual_seed(3)
    x = torch.full((16, 3, 32, 32), 100.0)  # far from N(0, 1) noise
    out = RandomErasing(prob=1.0)(x)
    fractions = (out[:, 0] != 100).float().mean(dim=(1, 2))
    assert (fractions > 0.015).all() and (fractions < 0.34).all()
    assert torch.equal(RandomErasing(prob=0.0)(x), x)


def test_randaugment_changes_images_and_stays_in_range():
    torch.manual_seed(4)
    x = batch(16).float() / 255
    out = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, prob=1.0)(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.float().mean() >= 0.9
    assert torch.equal(RandAugment(prob=0.0)(x), x)


@pytest.mark.parametrize("std", [float("inf"), 101.0])
def test_randaugment_magnitude_std_inf_draws_uniformly_up_to_the_magnitude_as_timm(std):
    """timm's 'mstd' above 100 (or inf) means a magnitude uniform in [0, m], not Gaussian noise
    so wide that the clamp leaves only 0 and 10."""
    torch.manual_seed(0)
    m = RandAugment(magnitude=9, magnitude_std=std).magnitudes(20_000, torch.device("cpu"))
    assert m.min() >= 0 and m.max() <= 0.9
    assert m.mean().item() == pytest.approx(0.45, abs=0.01)
    assert ((m > 0.2) & (m < 0.7)).float().mean().item() == pytest.approx(5 / 9, abs=0.02)


def test_randaugment_magnitudes_are_normal_around_the_magnitude_and_clamped():
    torch.manual_seed(0)
    m = RandAugment(magnitude=9, magnitude_std=0.5).magnitudes(20_000, torch.device("cpu"))
    assert m.max() == 1.0 and m.min() > 0.6  # 9 +- 0.5 on the 0-10 scale, clamped at 10
    assert m[m < 1].mean().item() == pytest.approx(0.89, abs=0.01)
    assert torch.equal(RandAugment(magnitude=9, magnitude_std=0).magnitudes(4, torch.device("cpu")),
                       torch.full((4,), 0.9))


MAGNITUDE_FREE = {"auto_contrast", "equalize", "invert", "posterize"}  # posterize keeps 4 bits at m=0


@pytest.mark.parametrize("op", [o for o in OPS if o not in MAGNITUDE_FREE])
def test_randaugment_magnitude_zero_is_identity(op):
    x = batch(4, 16).float() / 255
    ra = RandAugment()
    out = ra.apply_op(op, x, torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert torch.allclose(out, x, atol=1e-5), op
    strong = ra.apply_op(op, x, torch.full((4,), 0.9), torch.ones(4))
    assert not torch.allclose(strong, x, atol=1e-3), op  # and a real change at m=9


def test_randaugment_ops_have_their_meaning():
    x = torch.rand(2, 3, 16, 16)
    ra = RandAugment(fill=(0.25, 0.5, 0.75))
    one = torch.ones(2)
    assert torch.allclose(ra.apply_op("invert", x, one, one), 1 - x)
    assert torch.allclose(ra.apply_op("brightness", x, one * 0.5, -one), (x * 0.55).clamp(0, 1))
    assert torch.equal(ra.apply_op("posterize", x, one, one), torch.zeros_like(x))  # m=10: 0 bits
    moved = ra.apply_op("translate_x", x, one, one)  # 0.45 of the width: the right side is fill
    assert torch.allclose(moved[:, :, :, -5:], torch.tensor([0.25, 0.5, 0.75]).view(1, 3, 1, 1).expand(2, 3, 16, 5))
    # rotation (30 degrees at m=10) of a ramp x = u / 15 about the centre (7.5, 7.5):
    # out(u, v) = (cos30 (u - 7.5) - sin30 (v - 7.5) + 7.5) / 15 (bilinear is exact on a ramp)
    ramp = (torch.arange(16.0) / 15).expand(1, 3, 16, 16)
    out = ra.apply_op("rotate", ramp, torch.ones(1), torch.ones(1))[0, 0, 5:11, 5:11]
    v, u = torch.meshgrid(torch.arange(5.0, 11), torch.arange(5.0, 11), indexing="ij")
    cos, sin = torch.cos(torch.deg2rad(torch.tensor(30.0))), torch.sin(torch.deg2rad(torch.tensor(30.0)))
    assert torch.allclose(out, (cos * (u - 7.5) - sin * (v - 7.5) + 7.5) / 15, atol=1e-5)
