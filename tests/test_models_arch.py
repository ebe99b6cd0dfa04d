"""The CvT network: the paper's sizes, its behaviour, and the knobs around it."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from cvt_lab.models import CvT, create_model, count_params, list_models, preset_config
from cvt_lab.models.cvt import DropPath
from model_helpers import randomise_bn


def tiny(**overrides) -> CvT:
    torch.manual_seed(0)
    return create_model("cvt_tiny", num_classes=5, **overrides)


@pytest.mark.parametrize("name, params", [
    ("cvt13", 19_997_480), ("cvt21", 31_622_696), ("cvt_w24", 277_196_392),
])
def test_param_counts_match_the_paper(name, params):
    assert count_params(preset_config(name)) == params  # built on the meta device
    assert count_params(preset_config(name + "_384")) == params  # no position embeddings


def test_param_count_of_a_real_model_matches_the_meta_count():
    model = create_model("cvt13")
    assert count_params(model) == 19_997_480
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_presets_listed_and_unknown_names_rejected():
    assert {"cvt13", "cvt21", "cvt_w24", "cvt13_384", "cvt_tiny"} <= set(list_models())
    with pytest.raises(KeyError, match="available"):
        create_model("cvt99")
    with pytest.raises(TypeError, match="unknown CvT option"):
        create_model("cvt13", depth=3)
    with pytest.raises(ValueError, match="one value per stage"):
        create_model("cvt13", embed_dims=(64, 192))
    # num_heads=0 failed with a bare 'integer modulo by zero'
    with pytest.raises(ValueError, match=r"'num_heads' got 0; every stage needs at least 1"):
        create_model("cvt13", num_heads=(1, 0, 6))


def test_paper_details():
    model = create_model("cvt13")
    attn = model.stage2.blocks[0].attn
    assert attn.scale == pytest.approx(384 ** -0.5)  # full width, not head width
    assert model.stage2.cls_token is not None and model.stage0.cls_token is None
    rates = [b.drop_path.rate for b in model.stage2.blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    assert all(b.drop_path.rate == 0 for b in model.stage0.blocks)
    assert attn.conv_proj_k.conv.stride == (2, 2) and attn.conv_proj_q.conv.stride == (1, 1)
    assert attn.conv_proj_k.conv.groups == 384 and attn.conv_proj_k.conv.bias is None


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (17, 64)])
def test_any_resolution_gives_logits(size):
    model = tiny().eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 5)


def test_bad_input_names_the_minimum_size():
    model = tiny()
    with pytest.raises(ValueError, match=r"minimum size is 8x8"):
        model(torch.randn(1, 3, 7, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize("overrides", [{}, {"patch_padding": 0}, {"kernel_qkv": 5, "padding_q": 2,
                                                                "padding_kv": 0},
                                       {"projection": "avg", "padding_kv": 0},
                                       # 'avg' projects q linearly: its q conv geometry (a 5x5
                                       # window, padding 1) shrinks nothing, yet the minimum was
                                       # 17 px where the network runs from 8
                                       {"projection": "avg", "kernel_qkv": 5, "padding_kv": 2}])
def test_the_minimum_size_is_exactly_where_the_network_stops_running(overrides, monkeypatch):
    """Below it some convolution has no output (or the last stage less than a token per
    stride); at it the network runs. The check is bypassed to see the network itself fail."""
    model = create_model("cvt_tiny", num_classes=3, img_size=64, **overrides).eval()
    minimum = model.config.min_input_size
    monkeypatch.setattr(CvT, "check_input", lambda self, x: None)
    assert model(torch.randn(1, 3, minimum, minimum + 3)).shape == (1, 3)
    if minimum > model.config.total_stride:  # below the stride the check alone refuses
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, minimum - 1, minimum + 3))


def test_a_geometry_that_cannot_run_at_its_own_size_is_refused():
    with pytest.raises(ValueError, match="img_size=32 is below the smallest input this geometry "
                                         "runs at, 67 px"):
        create_model("cvt13", kernel_qkv=5, padding_q=2, padding_kv=0, img_size=32)
    # below the total stride every convolution may still have an output, but the model refuses
    # such inputs: cvt13 at img_size=8 built, then refused 8 px images, its own size
    with pytest.raises(ValueError, match=re.escape(
            "img_size=8 is below the smallest input this geometry runs at, 16 px (total stride "
            "16): raise img_size to >= 16, or check the stride/kernel/padding options")):
        create_model("cvt13", img_size=8)
    model = create_model("cvt13", num_classes=3, img_size=16).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    # 'avg' never convolves q, so its q geometry does not decide (this one was refused at 32 px)
    model = create_model("cvt13", num_classes=3, projection="avg", kernel_qkv=5, padding_kv=2,
                         img_size=32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_no_cls_token_mean_pools():
    model = tiny(cls_token=False).eval()
    assert all(s.cls_token is None for s in model.stages)
    x = torch.randn(2, 3, 32, 32)
    fmap = x
    for stage in model.stages:
        fmap, cls, _ = stage(fmap)
        assert cls is None
    pooled = model.norm(fmap.flatten(2).transpose(1, 2)).mean(1)
    torch.testing.assert_close(model(x), model.head(pooled))


def test_attention_maps_on_request_match_the_fast_path():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    logits, maps = model.attention_maps(x)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
    assert len(maps) == sum(model.config.depths)
    last = maps[-1]
    # stage 3: a 4x4 query grid + cls, keys on the stride-2 2x2 grid + cls
    assert last["attn"].shape == (2, 4, 17, 5) and last["kv_hw"] == (2, 2) and last["has_cls"]
    torch.testing.assert_close(last["attn"].sum(-1), torch.ones(2, 4, 17))


def test_no_weight_decay_names_norms_biases_and_tokens():
    model = tiny(pos_embed=True)
    names = model.no_weight_decay()
    assert "stage2.cls_token" in names and "stage0.pos_embed" in names
    assert "stage0.blocks.0.norm1.weight" in names and "head.bias" in names
    assert "head.weight" not in names and "stage0.blocks.0.attn.proj_q.weight" not in names


def test_reset_classifier_for_fine_tuning():
    model = tiny()
    body = copy.deepcopy(model.stage2.state_dict())
    model.reset_classifier(7)
    assert model.head.out_features == 7 and model.config.num_classes == 7
    assert all(torch.equal(v, model.stage2.state_dict()[k]) for k, v in body.items())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 128)
    model.to(torch.bfloat16).reset_classifier(3)  # a new head in float32 failed in forward
    assert model.head.weight.dtype == torch.bfloat16
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 3)


def test_position_embeddings_are_interpolated_for_other_grids():
    model = tiny(pos_embed=(True, False, True)).eval()
    stage = model.stage0
    assert stage.pos_embed.shape == (1, 16 * 16, 32)
    assert torch.equal(stage._pos_embed(16, 16), stage.pos_embed)
    resized = stage._pos_embed(24, 20)
    assert resized.shape == (1, 24 * 20, 32)
    # bicubic resampling of a constant grid is that constant
    with torch.no_grad():
        stage.pos_embed.fill_(0.25)
    torch.testing.assert_close(stage._pos_embed(24, 20), torch.full((1, 480, 32), 0.25))
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, 5)


def test_patch_token_embedding_and_projection_ablations_run():
    for overrides in ({"token_embed": "patch"}, {"projection": "avg"}, {"projection": "linear"},
                      {"stride_kv": 1}, {"activation": "gelu"}):
        model = tiny(**overrides)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert tiny(token_embed="patch").stage0.patch_embed.proj.kernel_size == (2, 2)


def test_q_projection_that_would_shrink_the_query_grid_is_refused():
    # a strided or unpadded q conv leaves fewer queries than tokens: the residual add failed
    # in forward with a bare shape error
    for overrides in ({"stride_q": 2}, {"kernel_qkv": 5}, {"stride_q": [1, 2, 1]}):
        with pytest.raises(ValueError, match="stride_q=1 and padding_q"):
            tiny(**overrides)
    model = tiny(kernel_qkv=5, padding_q=2, padding_kv=2).eval()
    assert model(torch.randn(1, 3, 32, 40)).shape == (1, 5)
    assert tiny(projection="avg", stride_q=2)(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_rates_outside_zero_to_one_are_refused():
    # drop_path=1.0 built and trained on NaN (the last block's kept fraction 0 divides the
    # mask); 1.5 failed in forward with 'bernoulli_ expects p to be in [0, 1], but got p=-0.5'
    for name, value in (("drop_path", 1.0), ("drop_path", 1.5), ("attn_drop", 1.5),
                        ("drop_rate", -0.1)):
        with pytest.raises(ValueError, match=rf"'{name}' got {value}; a rate must be in \[0, 1\)"):
            tiny(**{name: value})


def test_drop_path_drops_the_residual_branch_per_sample():
    drop = DropPath(0.5).train()
    out = drop(torch.ones(1000, 4))
    kept = out[:, 0] > 0
    assert set(out.unique().tolist()) == {0.0, 2.0} and 400 < kept.sum() < 600
    assert torch.equal(DropPath(0.5).eval()(torch.ones(3, 4)), torch.ones(3, 4))


def _assert_checkpointed_step_replays(compile_backend: str | None = None, **overrides) -> None:
    """One training step with and without activation checkpointing, dropout, attention dropout
    and drop path on: the same loss, every gradient and every BatchNorm buffer, bit for bit.
    The recomputation must replay the RNG and move the running statistics only once."""
    model = tiny(drop_rate=0.1, attn_drop=0.1, drop_path=(0.2, 0.2, 0.3), **overrides)
    plain = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 32, 32)
    losses = []
    for net in (model, plain):
        run = torch.compile(net, fullgraph=True, backend=compile_backend) if compile_backend else net
        torch.manual_seed(7)
        loss = run(x).logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    for (name, p), ref in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, ref.grad, atol=0, rtol=0, msg=name)
    for (name, b), ref in zip(model.named_buffers(), plain.buffers()):
        torch.testing.assert_close(b, ref, atol=0, rtol=0, msg=name)
    assert model.stage0.blocks[0].attn.conv_proj_k.bn.num_batches_tracked == 1


@pytest.mark.parametrize("cls_token", [(False, False, True), False])
def test_grad_checkpointing_replays_the_training_step_exactly(cls_token):
    # the eager recomputation in backward ran each block's forward again, so every BatchNorm
    # took a second momentum step on its running statistics (num_batches_tracked 2 per step)
    _assert_checkpointed_step_replays(cls_token=cls_token)


def test_every_gradient_has_its_parameters_strides():
    """DDP lays its gradient buckets out like the parameters and warns (and copies) on every
    step when a gradient's strides differ: the depthwise convs' weights are made to match."""
    model = create_model("cvt13", num_classes=10, img_size=64)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    clone = create_model("cvt13", num_classes=10, img_size=64)
    clone.load_state_dict(model.state_dict())  # loading keeps the strides
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        assert p.grad.stride() == p.stride() == q.stride(), name


@pytest.mark.parametrize("overrides", [{}, {"projection": ("dw_bn", "avg", "linear")},
                                       {"stride_kv": 1, "cls_token": False}])
def test_fuse_bn_keeps_eval_outputs(overrides):
    model = tiny(**overrides)
    randomise_bn(model)
    model.eval()
    x = torch.randn(2, 3, 40, 32)
    before = model(x)
    with pytest.raises(RuntimeError, match="eval"):
        copy.deepcopy(model).train().fuse_bn()
    model.fuse_bn()
    assert model.bn_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    fused = model(x)
    torch.testing.assert_close(fused, before, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.fuse_bn()(x), fused)  # a second call folds nothing more


def test_torch_compile_full_graph_train_and_eval():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fails on a graph break
    compiled(x).sum().backward()
    assert model.head.weight.grad is not None
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_torch_compile_full_graph_with_grad_checkpointing():
    _assert_checkpointed_step_replays("aot_eager")


def test_a_compiled_model_checks_its_inputs_as_the_eager_one_does():
    # the checks were skipped while compiling: a compiled cvt_tiny gave logits for a 7x32 or 4x4
    # image, which the eager model refuses naming the minimum size
    model = tiny().eval()
    compiled = torch.compile(model, backend="aot_eager")
    try:
        assert compiled(torch.randn(1, 3, 32, 32)).shape == (1, 5)
        for size in ((7, 32), (4, 4)):
            with pytest.raises(ValueError, match=rf"input of {size[0]}x{size[1]} px is too small "
                                                 r"for this model .* the minimum size is 8x8 px"):
                compiled(torch.randn(1, 3, *size))
        with pytest.raises(ValueError, match="CvT expects floating-point images; got torch.uint8"):
            compiled(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        assert compiled(torch.randn(1, 3, 40, 48)).shape == (1, 5)
    finally:
        # the sizes above made Dynamo mark CvT.forward's input dynamic, which it remembers for
        # later compiles in this process; inductor cannot lower CvT with dynamic shapes (yet)
        torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x),
                                   atol=1e-5, rtol=1e-5)
        # another resolution: inductor (torch 2.13) cannot lower CvT compiled for any image
        # size (ValueRangeError), which a second size asks of it; dynamic=False, as the README
        # says, recompiles per size instead
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        for size in (32, 40):
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_model_package_stands_alone():
    import subprocess
    import sys

    code = ("import sys, cvt_lab.models; "
            "print(sorted(m for m in ('transformers', 'lightning', 'hydra', 'timm', 'torchvision') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, value, message", [
    ("stride_kv", 0, "'stride_kv' got 0 in stage 0; a stride must be >= 1"),
    ("stride_kv", -1, "'stride_kv' got -1 in stage 0; a stride must be >= 1"),  # hung
    ("patch_stride", 0, "'patch_stride' got 0 in stage 0; a stride must be >= 1"),
    ("padding_kv", -1, "'padding_kv' got -1 in stage 0; a padding must be >= 0"),
    ("patch_size", 0, "'patch_size' got 0 in stage 0; a kernel size must be >= 1"),
])
def test_out_of_range_geometry_is_refused_by_name(name, value, message):
    # stride_kv=-1 looped for ever looking for a size the network runs at (so did
    # `run.py model.stride_kv=-1`), a zero stride failed with a bare ZeroDivisionError, and
    # padding_kv=-1 claimed the model runs from 33 px, where PyTorch refuses negative padding
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("cvt_tiny", **{name: value})


@pytest.mark.parametrize("overrides", [{"projection": "avg", "stride_kv": 3},
                                       {"projection": "avg", "kernel_qkv": 1, "padding_q": 0,
                                        "padding_kv": 0}])
def test_attention_maps_name_the_pooled_kv_grid_the_attention_ran_over(overrides):
    # ceil-mode pooling drops a last window that would start in the padding: the stated kv_hw
    # was 8x8 where stage 1 attended over 7x7 keys (and count_macs counted the 8x8)
    model = tiny(**overrides).eval()
    _, maps = model.attention_maps(torch.randn(1, 3, 40, 36))
    for m in maps:
        kv_h, kv_w = m["kv_hw"]
        assert m["attn"].shape[-1] == kv_h * kv_w + int(m["has_cls"]), (m["stage"], m["kv_hw"])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_naming_the_conversion(dtype):
    # a uint8 image batch (as decoded) failed inside the first conv with "Input type (unsigned
    # char) and bias type (float) should be the same"
    with pytest.raises(ValueError, match=re.escape(
            f"CvT expects floating-point images; got {dtype}: convert and normalise them first, "
            "e.g. (x.float() / 255 - mean) / std")):
        tiny()(torch.zeros(1, 3, 32, 32, dtype=dtype))


def test_an_empty_batch_gives_empty_logits():
    # failed with "cannot reshape tensor of 0 elements into shape [0, -1, 32]"
    model = tiny().eval()
    assert model(torch.randn(0, 3, 32, 40)).shape == (0, 5)
    assert model.attention_maps(torch.randn(0, 3, 32, 32))[1][-1]["attn"].shape == (0, 4, 17, 5)


def test_a_pooling_padding_over_half_its_window_is_refused_when_built():
    # it built, then failed in the first forward (mid-run under run.py) with PyTorch's "pad
    # should be at most half of effective kernel size"
    with pytest.raises(ValueError, match=re.escape(
            "stage 0: projection 'avg' pools k/v with kernel_qkv=3, which allows padding_kv <= 1 "
            "(half the window); got padding_kv=2")):
        tiny(projection=("avg", "dw_bn", "dw_bn"), padding_kv=2)
    assert tiny(projection="linear", padding_kv=2)(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize(("knobs", "message"), [
    ({"pos_embed": "false"}, "CvT option 'pos_embed' got 'false' (str) in stage 0; it takes true or false"),
    ({"cls_token": (False, False, "no")}, "CvT option 'cls_token' got 'no' (str) in stage 2; it takes true or false"),
    ({"embed_dims": (32.0, 64, 128)}, "CvT option 'embed_dims' got 32.0 (float) in stage 0; it takes an integer"),
    ({"embed_dims": (0, 64, 128)}, "CvT option 'embed_dims' got 0 in stage 0; it must be > 0"),
    ({"mlp_ratio": -1}, "CvT option 'mlp_ratio' got -1 in stage 0; it must be > 0"),
    # the MLP's width is int(dim * ratio): 0.01 of 32 built a 0-wide MLP (its output a bias)
    ({"mlp_ratio": (4, 4, 0.005)}, "CvT option 'mlp_ratio' got 0.005 in stage 2: the MLP would "
                                   "have int(128 * 0.005) = 0 hidden units; it must be >= 1/128"),
    # depth -1 failed in torch.linspace; depth 0 in the cls stage built a model whose logits
    # are the same for every image (the cls token reached the head through no block)
    ({"depths": (1, -1, 2)}, "CvT option 'depths' got -1 in stage 1; every stage needs at least "
                             "1 block"),
    ({"depths": (1, 1, 0)}, "CvT option 'depths' got 0 in stage 2; every stage needs at least "
                            "1 block"),
    # -1 failed with "Trying to create tensor with negative dimension"; 0 built a model that
    # took only 0-channel images
    ({"in_chans": 0}, "CvT option 'in_chans' got 0; an image has at least 1 channel"),
    ({"in_chans": -1}, "CvT option 'in_chans' got -1; an image has at least 1 channel"),
    ({"activation": 1}, "CvT option 'activation' got 1 (int); it takes a string"),
])
def test_knobs_of_the_wrong_type_or_sign_are_refused_by_name(knobs, message):
    # the string "false" counted as true (position embeddings on), a float width failed in
    # torch.empty, a negative MLP ratio with "negative dimension"
    with pytest.raises(ValueError) as err:
        create_model("cvt_tiny", **knobs)
    assert str(err.value) == message


def test_init_is_the_original_trunc_norm_scheme_head_included():
    """microsoft/CvT's 'trunc_norm' init per stage, then only the classifier's weight."""
    torch.manual_seed(0)
    model = create_model("cvt13")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = linears.pop("head")
    for name, m in linears.items():  # q/k/v/out projections and MLPs of every block
        assert torch.count_nonzero(m.bias) == 0, name
        assert abs(m.weight.std().item() - 0.02) < 0.002, name
    assert abs(head.weight.std().item() - 0.02) < 0.002
    bound = 384 ** -0.5  # PyTorch's default Linear bias: uniform in +-1/sqrt(fan_in)
    assert head.bias.abs().max() <= bound and head.bias.std() > bound / 3  # not zeroed
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.count_nonzero(m.bias) == 0
    assert abs(model.stage2.cls_token.std().item() - 0.02) < 0.005
    # a head reset for fine-tuning starts the same way
    model.reset_classifier(7)
    assert model.head.bias.abs().max() <= bound and torch.count_nonzero(model.head.bias) == 7
    assert abs(model.head.weight.std().item() - 0.02) < 0.004
