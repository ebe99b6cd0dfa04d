"""Checkpoints: transformers and original weights load exactly, export round-trips, misfits fail.

transformers is the reference implementation here (a test dependency only).
"""

from __future__ import annotations

import json

import pytest
import torch

from cvt_lab.models import (CheckpointError, count_macs, create_model, export_hf,
                            load_pretrained, preset_config, read_checkpoint)
from cvt_lab.models.keymap import rename_keys
from model_helpers import randomise_bn

transformers = pytest.importorskip("transformers")

SMALL = dict(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3], num_labels=10)
ATOL = dict(atol=1e-5, rtol=1e-5)


class QuickGELU(torch.nn.Module):
    """The original code's activation, written out here as an independent reference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def hf_model(seed: int = 0, **config):
    torch.manual_seed(seed)
    model = transformers.CvtForImageClassification(transformers.CvtConfig(**config))
    randomise_bn(model)
    return model.eval()


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    model = hf_model(**SMALL)
    path = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_transformers_weights_give_transformers_logits(small_hf, size):
    hf, path = small_hf
    ours = create_model(pretrained=path).eval()
    assert ours.config.activation == "gelu" and ours.config.num_classes == 10
    assert ours.config.num_heads == (1, 2, 3)
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(ours(x), hf_logits(hf, x), **ATOL)


def test_cvt13_transformers_weights_give_transformers_logits(tmp_path):
    hf = hf_model(num_labels=1000)  # transformers' defaults are CvT-13
    hf.save_pretrained(tmp_path)
    ours = create_model("cvt13", pretrained=tmp_path).eval()
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(ours(x), hf_logits(hf, x), **ATOL)


@pytest.mark.parametrize("variant", [
    # (transformers' CvT crashes without a cls token in the last stage: not comparable)
    dict(stride_kv=[1, 1, 1], kernel_qkv=[5, 3, 3], padding_kv=[2, 1, 1], padding_q=[2, 1, 1]),
    dict(patch_sizes=[4, 2, 2], patch_padding=[0, 0, 0], qkv_bias=[False, True, False]),
])
def test_transformers_variants_give_transformers_logits(tmp_path, variant):
    hf = hf_model(**{**SMALL, **variant})
    hf.save_pretrained(tmp_path)
    ours = create_model(pretrained=tmp_path).eval()
    x = torch.randn(2, 3, 64, 48)
    torch.testing.assert_close(ours(x), hf_logits(hf, x), **ATOL)


def test_pytorch_model_bin_and_bare_safetensors(small_hf, tmp_path):
    hf, path = small_hf
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(create_model(pretrained=tmp_path).eval()(x), hf_logits(hf, x), **ATOL)
    # a weights file alone: the architecture is read off the shapes (+ num_heads)
    bare = create_model(pretrained=path / "model.safetensors", num_heads=(1, 2, 3))
    torch.testing.assert_close(bare.eval()(x), hf_logits(hf, x), **ATOL)


def test_export_round_trips_through_transformers(tmp_path):
    torch.manual_seed(3)
    # depths (1, 2, 3): transformers' CvT crashes unless depth > stage index
    ours = create_model("cvt_tiny", num_classes=4, activation="gelu", drop_path=0.1,
                        depths=(1, 2, 3))
    randomise_bn(ours)
    ours.eval()
    labels = {0: "cat", 1: "dog", 2: "fish", 3: "bird"}
    export_hf(ours, tmp_path, id2label=labels)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "cvt" and config["architectures"] == ["CvtForImageClassification"]
    assert config["drop_path_rate"] == [0.0, 0.0, 0.1] and isinstance(config["mlp_ratio"][0], float)
    hf, info = transformers.CvtForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert hf.config.id2label[1] == "dog"
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(hf_logits(hf.eval(), x), ours(x), **ATOL)
    back = create_model(pretrained=tmp_path).eval()
    torch.testing.assert_close(back(x), ours(x), atol=0, rtol=0)
    # the resolution too: it came back as 224 px, so count_macs(back) costed another size
    assert back.config == ours.config and count_macs(back) == count_macs(ours)


def test_export_of_a_compiled_model_is_the_model_export(tmp_path):
    # torch.compile's wrapper names its keys '_orig_mod.<name>': export failed with
    # "no transformers name for ['_orig_mod.stage0...', ...]", every key listed
    torch.manual_seed(0)
    model = create_model("cvt_tiny", num_classes=3, activation="gelu", depths=(1, 2, 3)).eval()
    export_hf(torch.compile(model), tmp_path / "compiled")
    export_hf(model, tmp_path / "plain")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "compiled" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


def test_export_refuses_what_transformers_cannot_run(tmp_path):
    ok = {"depths": (1, 2, 3)}  # transformers' CvT cannot build stage i with <= i blocks
    for overrides, match in (({"pos_embed": True}, "position embeddings"),
                             ({"projection": "avg"}, "dw_bn"),
                             ({"cls_token": False}, "no cls token"),
                             ({"depths": (1, 1, 2)}, "more than i blocks")):
        with pytest.raises(ValueError, match=match):
            export_hf(create_model("cvt_tiny", activation="gelu", **{**ok, **overrides}), tmp_path)
    with pytest.warns(UserWarning, match="exact GELU"):
        export_hf(create_model("cvt_tiny", **ok), tmp_path)  # quick_gelu: allowed, with a warning
    with pytest.raises(ValueError, match="fuse_bn"):
        export_hf(create_model("cvt_tiny", activation="gelu", **ok).eval().fuse_bn(), tmp_path)
    # labels keyed 1..n were written as given: transformers then named no label for class 0
    # and mapped the last name to a class that does not exist; a list failed with
    # "'list' object has no attribute 'items'"
    three = create_model("cvt_tiny", num_classes=3, activation="gelu", **ok)
    for labels in ({1: "a", 2: "b", 3: "c"}, ["a", "b", "c"]):
        with pytest.raises(ValueError) as err:
            export_hf(three, tmp_path / "labels", id2label=labels)
        assert str(err.value) == (
            "id2label must map each class index 0..2 to its name, e.g. "
            "id2label=dict(enumerate(class_names)); got "
            + ("keys ['1', '2', '3']" if isinstance(labels, dict) else "a list"))
    assert not (tmp_path / "labels").exists()
    # the patch-embedding ablation is a conv with kernel = stride: representable
    export_hf(create_model("cvt_tiny", activation="gelu", token_embed="patch", **ok), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["patch_sizes"] == [2, 2, 2]


def test_original_format_uses_quick_gelu_and_unwraps(tmp_path):
    # reference: transformers' network computing the original code's QuickGELU
    hf = hf_model(**SMALL)
    for layer in hf.modules():
        if isinstance(layer, transformers.models.cvt.modeling_cvt.CvtIntermediate):
            layer.activation = QuickGELU()
    original, unknown = rename_keys(hf.state_dict(), to_hf=False)
    assert not unknown
    assert "stage2.blocks.2.attn.conv_proj_v.bn.running_var" in original
    assert "stage1.patch_embed.norm.weight" in original and "head.weight" in original
    path = tmp_path / "CvT-small-IN-1k.pth"
    torch.save({"epoch": 3, "state_dict": {f"model.module.{k}": v for k, v in original.items()}}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "original" and ckpt.num_classes == 10
    ours = create_model(pretrained=path, num_heads=(1, 2, 3)).eval()
    assert ours.config.activation == "quick_gelu"
    x = torch.randn(2, 3, 64, 56)
    torch.testing.assert_close(ours(x), hf_logits(hf, x), **ATOL)


def test_original_preset_is_inferred_from_shapes(tmp_path):
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = create_model(pretrained=tmp_path / "w.pth")
    assert model.config == src.config
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_position_embeddings_of_another_resolution_are_resampled(tmp_path):
    # README: fine-tuning works at any resolution, position embeddings interpolated; loading a
    # pos_embed checkpoint into a model of another img_size failed with shape mismatches
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3, pos_embed=(True, False, True)).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = create_model("cvt_tiny", num_classes=3, pos_embed=(True, False, True), img_size=48,
                         pretrained=tmp_path / "w.pth").eval()
    assert model.stage0.pos_embed.shape == (1, 24 * 24, 32)
    x = torch.randn(2, 3, 48, 48)  # the source model resamples its grids the same way at 48 px
    torch.testing.assert_close(model(x), src(x), **ATOL)
    report = load_pretrained(model, tmp_path / "w.pth")
    assert report.notes == ["stage0.pos_embed: resampled from a 16x16 to a 24x24 grid",
                            "stage2.pos_embed: resampled from a 4x4 to a 6x6 grid"]
    # without a preset name the size is read off the grids: the weights load unresampled
    big = create_model("cvt_tiny", num_classes=3, pos_embed=True, img_size=64)
    torch.save(big.state_dict(), tmp_path / "big.pth")
    inferred = create_model(pretrained=tmp_path / "big.pth")
    assert inferred.config.img_size == 64
    assert torch.equal(inferred.stage1.pos_embed, big.stage1.pos_embed)


def test_other_preset_fails_naming_shapes_and_loads_nothing(tmp_path):
    torch.manual_seed(0)
    torch.save(create_model("cvt_tiny", num_classes=5).state_dict(), tmp_path / "tiny.pth")
    target = create_model("cvt_tiny", num_classes=5, embed_dims=(32, 64, 96), num_heads=(1, 2, 3))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained(target, tmp_path / "tiny.pth")
    msg = str(err.value)
    assert "stage2.patch_embed.proj.weight: checkpoint (128, 64, 3, 3) vs model (96, 64, 3, 3)" in msg
    assert "embed_dims [32, 64, 128]" in msg and "nothing was loaded" in msg
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
    deeper = create_model("cvt_tiny", num_classes=5, depths=(1, 1, 3))
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: stage2\.blocks\.2\."):
        load_pretrained(deeper, tmp_path / "tiny.pth")


def test_weights_of_another_preset_name_the_preset_to_build(tmp_path, small_hf):
    # cvt21 weights into cvt13 listed 272 unexpected keys (or the differing depths) and no fix
    torch.save(create_model("cvt21", num_classes=0).state_dict(), tmp_path / "cvt21.pth")
    with pytest.raises(CheckpointError) as err:
        create_model("cvt13", num_classes=0, pretrained=tmp_path / "cvt21.pth")
    assert str(err.value).endswith(
        "  (its embed_dims and depths are preset cvt21's (or cvt21_384's): build that preset, "
        "model=cvt21 on the command line)")
    hf_model(depth=[1, 4, 16], num_labels=2).save_pretrained(tmp_path / "hf21")
    with pytest.raises(CheckpointError) as err:
        create_model("cvt13", pretrained=tmp_path / "hf21")
    assert str(err.value) == (
        f"checkpoint '{tmp_path / 'hf21'}' is another architecture: depths: model (1, 2, 10) vs "
        "checkpoint (1, 4, 16). Its embed_dims and depths are preset cvt21's (or cvt21_384's): "
        "build that preset, model=cvt21 on the command line")
    _, path = small_hf  # no preset of its widths: the fields to set
    with pytest.raises(CheckpointError) as err:
        create_model("cvt_tiny", pretrained=path)
    assert str(err.value).endswith(
        ". Build the model with the checkpoint's values (model.<field>=... on the command line), "
        "or call create_model(pretrained=...) without a preset name to take them all from it")


def test_transformers_config_of_another_architecture_fails(small_hf):
    _, path = small_hf
    with pytest.raises(CheckpointError, match=r"stride_kv: model \(1, 1, 1\) vs checkpoint \(2, 2, 2\)"):
        create_model("cvt_tiny", pretrained=path, embed_dims=(16, 32, 48), depths=(1, 2, 3),
                     num_heads=(1, 2, 3), patch_size=(7, 3, 3), patch_stride=(4, 2, 2),
                     patch_padding=(2, 1, 1), stride_kv=1)
    with pytest.raises(CheckpointError, match="depths"):
        create_model("cvt13", pretrained=path)


def test_new_number_of_classes_resets_only_the_head(small_hf, caplog):
    hf, path = small_hf
    model = create_model(pretrained=path, num_classes=3)
    assert model.head.out_features == 3
    assert "classifier reset" in caplog.text and "10 classes" in caplog.text
    full = create_model(pretrained=path)
    for k, v in full.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="num_classes"):
        load_pretrained(create_model(pretrained=path, num_classes=3), path)
    report = load_pretrained(model, path, reset_head=True)
    assert report.head_reset and report.checkpoint_classes == 10 and report.format == "transformers"


def test_hub_ids_download_and_offline_errors_are_clear(small_hf, monkeypatch):
    import huggingface_hub

    _, path = small_hf
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert create_model(pretrained="microsoft/cvt-small").config.num_classes == 10
    assert calls == [("microsoft/cvt-small", ["config.json", "model.safetensors", "pytorch_model.bin"])]

    def offline(repo_id, allow_patterns):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError) as err:
        create_model("cvt13", pretrained="microsoft/cvt-13")
    # the hint named model.safetensors only, though a directory with pytorch_model.bin loads too
    assert str(err.value).startswith("could not fetch 'microsoft/cvt-13' from the Hugging Face Hub")
    assert str(err.value).endswith(
        "If this machine is offline, download the repository elsewhere and pass its local "
        "directory (holding config.json and model.safetensors or pytorch_model.bin) instead of "
        "the id.")


def test_unreadable_sources_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        create_model("cvt13", pretrained=tmp_path / "missing.pth")
    # a relative path of one folder and a weights file looks like 'owner/name': it was sent
    # to the Hub, and a mistyped path failed with "could not fetch ... If this machine is offline"
    monkeypatch.chdir(tmp_path)
    for missing in ("weights/cvt13.pth", "runs/last.ckpt", "export/model.safetensors",
                    "runs/model_best.pth.tar"):
        with pytest.raises(FileNotFoundError, match=rf"no checkpoint at '{missing}'"):
            create_model("cvt13", pretrained=missing)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        create_model("cvt13", pretrained=tmp_path)
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"stage0.weird.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not a CvT"):
        create_model(pretrained=tmp_path / "odd.pth")


def test_a_training_checkpoint_with_ema_loads_its_ema_weights(tmp_path):
    from cvt_lab.module import CvTModule

    torch.manual_seed(0)
    trained = CvTModule(model={"name": "cvt_tiny"}, optimizer={}, scheduler={}, num_classes=10,
                        ema_decay=0.9)
    with torch.no_grad():  # the EMA differs from the trained weights, as after any training
        for p in trained.net.parameters():
            p.add_(1.0)
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": trained.state_dict()}, path)
    model = create_model("cvt_tiny", num_classes=10, pretrained=path)
    for k, v in trained.ema.module.state_dict().items():  # what val/test used
        assert torch.equal(model.state_dict()[k], v), k


def test_a_training_checkpoint_builds_the_network_it_trained(tmp_path):
    # shapes record no strides or paddings: without the saved config a patch-embedding,
    # k/v-stride-1 net loaded silently as the preset's conv, stride-2 net (other logits)
    from cvt_lab.module import CvTModule

    torch.manual_seed(0)
    knobs = {"token_embed": "patch", "stride_kv": 1, "activation": "gelu"}
    trained = CvTModule(model={"name": "cvt_tiny", **knobs}, optimizer={}, scheduler={},
                        num_classes=10).eval()
    ckpt = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = create_model(pretrained=tmp_path / "last.ckpt").eval()
    assert model.config == trained.net.config
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
    with pytest.raises(CheckpointError, match=r"stride_kv: model \(2, 2, 2\) vs checkpoint \(1, 1, 1\)"):
        create_model("cvt_tiny", num_classes=10, pretrained=tmp_path / "last.ckpt")
    # by name (model.pretrained=<ckpt>): the activation it trained with, not QuickGELU
    named = create_model("cvt_tiny", num_classes=4, token_embed="patch", stride_kv=1,
                         pretrained=tmp_path / "last.ckpt")
    assert named.config.activation == "gelu"


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "net._orig_mod."])
def test_state_dicts_of_compiled_and_wrapped_models_load(tmp_path, prefix):
    # torch.compile(model).state_dict() names every key '_orig_mod.<name>' (under DDP:
    # 'module._orig_mod.'): such files failed as 'not a CvT state dict'
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3)
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, tmp_path / "w.pth")
    model = create_model(pretrained=tmp_path / "w.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_fused_weights_reload_into_a_fused_model_and_misfits_say_so(tmp_path):
    # a state dict saved after fuse_bn() failed to load with 48 missing BatchNorm keys and
    # no word on the fix
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3)
    randomise_bn(src)
    fused = src.eval().fuse_bn()
    torch.save(fused.state_dict(), tmp_path / "fused.pth")
    with pytest.raises(CheckpointError, match=r"saved after fuse_bn\(\).*model\.eval\(\)\.fuse_bn\(\)"):
        create_model(pretrained=tmp_path / "fused.pth")
    model = create_model("cvt_tiny", num_classes=3).eval().fuse_bn()
    load_pretrained(model, tmp_path / "fused.pth")
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(model(x), fused(x), atol=0, rtol=0)
    torch.save(create_model("cvt_tiny", num_classes=3).state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"before fuse_bn\(\)"):
        load_pretrained(model, tmp_path / "plain.pth")


def test_bare_weights_of_another_token_embedding_are_refused_not_guessed(tmp_path):
    # a bare state dict records kernels but no strides or paddings: the patch-embedding
    # ablation (kernel 2 = stride, padding 0) loaded as a kernel-2 conv with the preset's
    # padding 1, silently another network
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3, token_embed=("patch", "conv", "conv")).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"stage 0 token embedding has a 2x2 kernel, preset "
                       r"cvt_tiny's 3x3.*pass token_embed=\.\.\. or patch_stride/patch_padding"):
        create_model(pretrained=tmp_path / "w.pth")
    model = create_model(pretrained=tmp_path / "w.pth", token_embed=("patch", "conv", "conv")).eval()
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def test_transformers_weights_of_two_stages_give_transformers_logits(tmp_path):
    # transformers' CvT takes any number of stages; ours too, but loading one failed with
    # "CvT option 'token_embed' has 3 values but the model has 2 stages", an option the user
    # never gave (config.json has no such field)
    lists = {k: v[:2] for k, v in transformers.CvtConfig().to_dict().items()
             if isinstance(v, list) and len(v) == 3}  # every per-stage list, cut to two stages
    hf = hf_model(**{**lists, "embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2],
                     "cls_token": [False, True], "num_labels": 4})
    hf.save_pretrained(tmp_path)
    ours = create_model(pretrained=tmp_path).eval()
    assert ours.config.num_stages == 2
    x = torch.randn(2, 3, 48, 40)
    torch.testing.assert_close(ours(x), hf_logits(hf, x), **ATOL)


def test_bare_weights_without_qkv_biases_load_as_such(tmp_path):
    # the original code's QKV_BIAS (per stage) leaves out attn.proj_{q,k,v}.bias, which the
    # key set records; the shapes-inferred model took the preset's biases and refused the file:
    # "9 missing from the checkpoint: stage0.blocks.0.attn.proj_q.bias, ...", with no fix
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3, qkv_bias=(False, True, False)).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = create_model(pretrained=tmp_path / "w.pth").eval()
    assert model.config == src.config
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def test_bare_weights_without_projection_convs_name_the_projection_to_pass(tmp_path):
    # 'avg' and 'linear' projections hold no weights, so a bare state dict cannot tell them
    # apart; the shapes-inferred model took the preset's 'dw_bn' and failed with "15 missing
    # from the checkpoint: stage1.blocks.0.attn.conv_proj_q.conv.weight, ..." and no fix
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3, projection=("dw_bn", "avg", "dw_bn")).eval()
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=tmp_path / "w.pth")
    assert str(err.value) == (
        "stage 1 has no q/k/v projection convs: it projected with 'avg' or 'linear', which hold "
        "no weights to tell them apart; pass projection=... with one method per stage, e.g. "
        "['dw_bn', 'avg', 'dw_bn'] or ['dw_bn', 'linear', 'dw_bn']")
    model = create_model(pretrained=tmp_path / "w.pth", projection=("dw_bn", "avg", "dw_bn")).eval()
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def _bare_of_stages(path, **stages):
    """Save the state dict of a CvT with CvT-13's per-stage values but another stage count."""
    src = create_model("cvt13", num_classes=3, **stages, token_embed="conv", mlp_ratio=4.0,
                       projection="dw_bn", kernel_qkv=3, padding_q=1, padding_kv=1, stride_q=1,
                       stride_kv=2, qkv_bias=True, pos_embed=False, drop_rate=0.0,
                       attn_drop=0.0, drop_path=0.1).eval()
    torch.save(src.state_dict(), path)
    return src


def test_bare_weights_of_other_stage_counts_load_with_the_unrecorded_fields_given(tmp_path):
    # a state dict of another stage count matches no preset: it failed with "IndexError: tuple
    # index out of range", and with num_heads, strides and paddings given with "CvT option
    # 'token_embed' has 3 values but the model has 4 stages", a field the user never gave
    torch.manual_seed(0)
    two = _bare_of_stages(tmp_path / "two.pth", embed_dims=(16, 32), depths=(1, 2),
                          num_heads=(1, 2), patch_size=(7, 3), patch_stride=(4, 2),
                          patch_padding=(2, 1), cls_token=(False, True))
    # CvT-13's first two stages: their strides and paddings go with these kernels
    assert create_model(pretrained=tmp_path / "two.pth", num_heads=(1, 2)).config == two.config
    src = _bare_of_stages(tmp_path / "w.pth", embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                          num_heads=(1, 2, 3, 4), patch_size=(7, 3, 3, 3),
                          patch_stride=(4, 2, 2, 2), patch_padding=(2, 1, 1, 1),
                          cls_token=(False, False, False, True))
    with pytest.raises(CheckpointError) as err:
        create_model(pretrained=tmp_path / "w.pth", num_heads=(1, 2, 3, 4))
    assert str(err.value) == (
        "stage 3 token embedding has a 3x3 kernel and no preset has a stage 3; weights record "
        "no stride or padding: pass token_embed=... or patch_stride/patch_padding")
    model = create_model(pretrained=tmp_path / "w.pth", num_heads=(1, 2, 3, 4),
                         patch_stride=(4, 2, 2, 2), patch_padding=(2, 1, 1, 1)).eval()
    assert model.config == src.config
    x = torch.randn(2, 3, 64, 80)
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


@pytest.mark.parametrize("prefix", ["", "cvt."])
def test_a_transformers_backbone_loads_with_a_new_norm_and_head(tmp_path, caplog, prefix):
    # CvtModel.save_pretrained writes 'encoder.stages...' (no 'cvt.', no final layernorm,
    # no classifier): it was read as an original-format file and refused with "217 unexpected
    # in the checkpoint: encoder.stages.0..."; with 'cvt.' keys, "4 missing: norm.weight, ..."
    from safetensors.torch import save_file

    torch.manual_seed(0)
    hf = transformers.CvtModel(transformers.CvtConfig(**SMALL))
    randomise_bn(hf)
    hf.eval().save_pretrained(tmp_path)
    save_file({prefix + k: v.contiguous() for k, v in hf.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    with caplog.at_level("INFO"):
        model = create_model(pretrained=tmp_path, num_classes=5).eval()
    assert model.head.out_features == 5
    report = model.load_report
    assert report.format == "transformers" and report.head_reset and report.checkpoint_classes == 0
    note = ("the checkpoint is a backbone (transformers' CvtModel: no final LayerNorm, no "
            "classifier): the model's final norm is new, and so is its head (5 classes)")
    assert report.notes == [note] and note in caplog.text
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        cls = hf(x).cls_token_value.squeeze(1)
        features = model.forward_features(x)[0]  # the new norm starts as a plain LayerNorm
    torch.testing.assert_close(features, torch.nn.functional.layer_norm(cls, (48,)), **ATOL)
    features_only = create_model(pretrained=tmp_path)  # no num_classes: a features model
    assert features_only.config.num_classes == 0 and not features_only.load_report.head_reset
    assert features_only.load_report.notes == [
        "the checkpoint is a backbone (transformers' CvtModel: no final LayerNorm, no "
        "classifier): the model's final norm is new"]


def test_the_resolution_in_a_checkpoints_name_is_its_img_size(tmp_path, caplog):
    # weights without position embeddings record no resolution: Microsoft's
    # 'CvT-13-384x384-IN-1k.pth' (or microsoft/cvt-13-384) came back as a 224 px model, silently
    torch.manual_seed(0)
    src = create_model("cvt_tiny", num_classes=3)
    for name in ("CvT-tiny-64x64-IN-1k.pth", "w.pth"):
        torch.save(src.state_dict(), tmp_path / name)
    assert create_model(pretrained=tmp_path / "CvT-tiny-64x64-IN-1k.pth").config.img_size == 64
    assert "assuming" not in caplog.text
    assert create_model(pretrained=tmp_path / "w.pth").config == src.config
    assert (f"'{tmp_path / 'w.pth'}' states no image size (as in 'CvT-13-384x384-IN-1k.pth'): "
            "assuming 32 px, the size count_macs(model) costs by default; pass img_size=... for "
            "another") in caplog.text
    assert create_model(pretrained=tmp_path / "w.pth", img_size=48).config.img_size == 48
    hf_model(**SMALL).save_pretrained(tmp_path / "cvt-small-384")  # as a Hub id names it
    assert create_model(pretrained=tmp_path / "cvt-small-384").config.img_size == 384


@pytest.mark.parametrize("knobs", [dict(qkv_bias=False), dict(in_chans=1), dict(pos_embed=True)])
def test_weights_of_other_knobs_name_how_to_build_their_model(tmp_path, knobs):
    # bare weights of the same preset with another knob (no q/k/v biases, one input channel,
    # position embeddings) failed naming the keys only, with no word on what to do
    torch.manual_seed(0)
    torch.save(create_model("cvt_tiny", num_classes=3, **knobs).state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        create_model("cvt_tiny", num_classes=3, pretrained=tmp_path / "w.pth")
    assert str(err.value).endswith(
        "\n  (build the model with the checkpoint's values (model.<field>=... on the command "
        "line), or call create_model(pretrained=...) without a preset name to take them all "
        "from it)")
    assert create_model(pretrained=tmp_path / "w.pth").config == preset_config(
        "cvt_tiny", num_classes=3, **knobs)  # as the hint says
