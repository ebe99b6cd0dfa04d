"""Bad config is refused before any work with one clear error; shipped configs pass."""

from __future__ import annotations

import re

import pytest

from conftest import CONF, compose_config
from cvt_lab.data import DataSourceError, ImageDataModule
from cvt_lab.validate import ConfigError, override_hint, validate
from test_configs import CASES


def cfg_for(tmp_path, *overrides):
    return compose_config(["logger=csv", *overrides], tmp_path)


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_shipped_option_passes_validation(group, option, tmp_path):
    validate(cfg_for(tmp_path, f"{group}={option}"))


@pytest.mark.parametrize(("override", "message"), [
    ("data.batch_size=abc", "data.batch_size='abc' (str) must be an integer > 0"),
    ("data.batch_size=0", "data.batch_size=0 (int) must be an integer > 0"),
    ("data.batch_size=64.0", "data.batch_size=64.0 (float) must be an integer > 0"),
    ("data.image_size=true", "data.image_size=True (bool) must be an integer > 0 (pixels)"),
    ("train=yes", "train='yes' (str) must be true or false"),
    ("optimizer.lr=-1", "optimizer.lr=-1 (int) must be a number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan (float) must be a number > 0"),
    ("augment.label_smoothing=1.5", "augment.label_smoothing=1.5 (float) must be a number in [0, 1)"),
    ("seed=1.5", "seed=1.5 (float) must be an integer in [0, 4294967295]"),
    # passed, then stopped run.py with Lightning's traceback ('-1 is not in bounds')
    ("seed=-1", "seed=-1 (int) must be an integer in [0, 4294967295]"),
    ("data.num_classes=1",  # passed, then failed inside torchmetrics
     "data.num_classes=1 (int) must be an integer >= 2 (or null with data=folder: one class per folder)"),
    ("optimizer.name=adam", "optimizer.name='adam' (str) must be adamw or sgd"),
    ("scheduler.name=linear", "scheduler.name='linear' (str) must be cosine, constant or step"),
    ("trainer.gradient_clip_val=-1",
     "trainer.gradient_clip_val=-1 (int) must be a number >= 0 (0 or null: no clipping)"),
    # each of these crashed mid-run with a bare TypeError/ZeroDivisionError, or ran silently
    ("compile=yes", "compile='yes' (str) must be true, false or torch.compile options, e.g. "
                    "{mode: max-autotune}"),
    ("channels_last=maybe", "channels_last='maybe' (str) must be true or false"),
    ("ema_decay=1.5", "ema_decay=1.5 (float) must be a number in (0, 1), e.g. 0.9998, or null (no EMA)"),
    ("model.drop_path=abc", "model.drop_path='abc' (str) must be a number in [0, 1) or one per stage, "
                            "e.g. [0,0,0.1] (null: the preset's)"),
    # the string 'no' is truthy: activation checkpointing went on, without a word
    ("model.grad_checkpointing=no", "model.grad_checkpointing='no' (str) must be true or false"),
    ("data.mean=[0.5,0.5]", "data.mean=[0.5, 0.5] (list) must be 3 numbers, one per RGB channel, "
                            "e.g. [0.485,0.456,0.406]"),
    ("data.std=[0.5,0.5,0]", "data.std=[0.5, 0.5, 0] (list) must be 3 numbers > 0, one per RGB "
                             "channel, e.g. [0.229,0.224,0.225]"),
    ("data.crop_pct=0", "data.crop_pct=0 (int) must be a number in (0, 1] (1.0: no crop)"),
    ("data.skip_corrupt=yes", "data.skip_corrupt='yes' (str) must be true or false"),
    ("augment.hflip=abc", "augment.hflip='abc' (str) must be a number in [0, 1]"),
    ("augment.mixup_alpha=-1", "augment.mixup_alpha=-1 (int) must be a number >= 0 (0: off)"),
    # stopped the run with 'RandAugment() argument after ** must be a mapping, not str'
    ("augment.randaugment=abc", "augment.randaugment='abc' (str) must be null (off) or "
                                "RandAugment's options, e.g. {num_ops: 2, magnitude: 9} "
                                "(augment=deit: the paper's)"),
    ("augment=deit augment.randaugment=true",
     "augment.randaugment=True (bool) must be null (off) or RandAugment's options, e.g. "
     "{num_ops: 2, magnitude: 9} (augment=deit: the paper's)"),
    ("augment=deit augment.randaugment.magnitude=abc",
     "augment.randaugment.magnitude='abc' (str) must be a number in [0, 10] (timm's scale; paper: 9)"),
    # passed, then stopped the run with a traceback from RandAugment's own check
    ("augment=deit augment.randaugment.magnitude=12",
     "augment.randaugment.magnitude=12 (int) must be a number in [0, 10] (timm's scale; paper: 9)"),
    ("optimizer.ref_batch=0", "optimizer.ref_batch=0 (int) must be an integer > 0, or null "
                              "(optimizer.lr is absolute)"),
    # passed, then failed in trainer.fit (data loaded) with torch's 'Invalid epsilon value: -1'
    # Lightning took any string: a typo ran non-deterministic kernels without a word
    ("trainer.deterministic=ture",
     "trainer.deterministic='ture' (str) must be true, false or warn (deterministic kernels, "
     "warning where there is none)"),
    ("optimizer.eps=-1", "optimizer.eps=-1 (int) must be a number >= 0"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9] (list) must be 2 numbers in [0, 1), e.g. [0.9,0.999]"),
    ("optimizer=sgd optimizer.momentum=abc", "optimizer.momentum='abc' (str) must be a number >= 0"),
    ("scheduler.warmup_epochs=abc", "scheduler.warmup_epochs='abc' (str) must be a number >= 0"),
    ("scheduler.warmup_steps=abc", "scheduler.warmup_steps='abc' (str) must be an integer >= 0, or "
                                   "null (use scheduler.warmup_epochs)"),
    ("scheduler.min_lr=abc", "scheduler.min_lr='abc' (str) must be a number >= 0 (an absolute lr)"),
    # each failed in the batch-split check with a bare ZeroDivisionError or ValueError traceback
    ("trainer.devices=0", "trainer.devices=0 (int) must be an integer >= 1, -1 or auto (all "
                          "devices), or a list of device indices, e.g. [0,1]"),
    ("trainer.devices=abc", "trainer.devices='abc' (str) must be an integer >= 1, -1 or auto (all "
                            "devices), or a list of device indices, e.g. [0,1]"),
    ("trainer.num_nodes=abc", "trainer.num_nodes='abc' (str) must be an integer >= 1"),
    ("trainer.accumulate_grad_batches=0",
     "trainer.accumulate_grad_batches=0 (int) must be an integer >= 1"),
    # each stopped at data setup with a bare TypeError ('>=' not supported) or sklearn's
    # InvalidParameterError about a 'test_size' parameter the user never set
    ("data.val_size=abc", "data.val_size='abc' (str) must be a fraction in (0, 1) or an image "
                          "count >= 1, e.g. 0.1 or 5000"),
    ("data.val_size=1.5", "data.val_size=1.5 (float) must be a fraction in (0, 1) or an image "
                          "count >= 1, e.g. 0.1 or 5000"),
    ("data.val_size=null", "data.val_size=None (NoneType) must be a fraction in (0, 1) or an "
                           "image count >= 1, e.g. 0.1 or 5000"),
    ("data.test_size=-0.2", "data.test_size=-0.2 (float) must be a fraction in (0, 1) or an image "
                            "count >= 1, e.g. 0.1 or 5000, or null (no test split: test on val)"),
    # every image was then refused as 'cannot decode ... Remove or replace the file' (and with
    # data.skip_corrupt=true skipped), blaming images for a config value
    ("data.max_image_pixels=abc", "data.max_image_pixels='abc' (str) must be an integer > 0 "
                                  "(pixels), or null (PIL's default, 89478485)"),
    ("data.split_seed=abc", "data.split_seed='abc' (str) must be an integer in [0, 4294967295], "
                            "or null (the run's seed)"),
])
def test_wrong_types_are_refused_naming_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, *override.split()))
    assert str(err.value) == message


@pytest.mark.parametrize(("override", "message"), [
    ("+data.batchsize=3", "unknown config key 'data.batchsize': did you mean data.batch_size?"),
    ("+model.drop_pat=0.1", "unknown config key 'model.drop_pat': did you mean model.drop_path"),
    ("+trainer.max_epoch=3", "unknown config key 'trainer.max_epoch': did you mean trainer.max_epochs"),
    ("+sede=3", "unknown config key 'sede': did you mean seed, scheduler?"),
    # passed, then stopped the run: RandAugment.__init__() got an unexpected keyword argument
    ("augment=deit +augment.randaugment.magnitud=6",
     "unknown config key 'augment.randaugment.magnitud': did you mean augment.randaugment.magnitude"),
])
def test_unknown_keys_are_refused_with_close_matches(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, *override.split()))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("key", ["seed", "train", "model", "model.name", "data.image_size",
                                 "data.mean", "optimizer.lr", "optimizer.batch_size",
                                 "scheduler.name", "trainer._target_"])
def test_a_removed_key_the_run_needs_is_refused_naming_it(key, tmp_path):
    # `~key` passed validation and stopped the run with a bare KeyError ('lr', in
    # configure_optimizers, once the loggers had started) or omegaconf's "Key 'seed' is not
    # in struct"; ~data.image_size with "Interpolation key 'data.image_size' not found"
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, f"~{key}"))
    assert str(err.value) == (f"{key} is missing (removed with ~{key}?), but the run needs it: "
                              f"set it with {key}=<value> instead")


def test_any_lightning_trainer_argument_is_a_known_key(tmp_path):
    validate(cfg_for(tmp_path, "+trainer.limit_train_batches=3", "+trainer.gradient_clip_val=1.0"))


def test_image_smaller_than_the_model_stride_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, "model=cvt13", "data.image_size=8"))
    assert str(err.value).startswith(
        "data.image_size=8 is below the minimum 16 px of model cvt13 (total stride 16, patch "
        "strides [4, 2, 2])")
    validate(cfg_for(tmp_path, "model=cvt13", "data.image_size=16"))  # the boundary is allowed
    with pytest.raises(ConfigError, match="minimum 8 px of model cvt_tiny"):
        validate(cfg_for(tmp_path, "data.image_size=7"))
    # a model img_size set apart from the data's is the model's own size: it must run there too
    with pytest.raises(ConfigError, match=re.escape(
            "model: img_size=8 is below the smallest input this geometry runs at, 16 px")):
        validate(cfg_for(tmp_path, "model=cvt13", "model.img_size=8"))


@pytest.mark.parametrize(("override", "message"), [
    ("model.projection=conv", "model: CvT option 'projection' got 'conv'"),
    # was "model: 'int' object is not iterable", naming neither the key nor the fix
    ("model.depths=3", "model: CvT option 'depths' got 3 (int); it takes one block count per "
                       "stage, e.g. [1,2,10]"),
    # passed, then failed building the network: torch's 'number of steps must be non-negative'
    ("model.depths=[1,-1,2]", "model: CvT option 'depths' got -1 in stage 1; every stage needs at least 1 block"),
])
def test_bad_model_knob_is_refused_as_a_config_error(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, override))
    assert str(err.value).startswith(message)


def test_class_names_must_match_num_classes(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, "data.num_classes=12"))
    assert str(err.value).startswith("data.class_names has 10 names but data.num_classes=12")


@pytest.mark.parametrize(("overrides", "message"), [
    (["train=false"], "train=false evaluates weights: also give ckpt_path=<file.ckpt> (a run's "
                      "checkpoint) or model.pretrained=<dir|hub id|file> (published weights)"),
    (["train=false", "test=false", "ckpt_path=x.ckpt"], "train=false test=false would run nothing"),
    (["resume=auto", "ckpt_path=x.ckpt"], "give either resume=auto or ckpt_path=<file.ckpt>, not both"),
    (["resume=yes"], "resume='yes': use resume=auto"),
    (["resume=auto", "train=false", "ckpt_path=null"], "resume=auto continues training: it needs train=true"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 without trainer.max_steps trains without end"),
    # ran, trained nothing, tested the untrained weights and exited 0 with their accuracy
    # every job of the sweep continued the newest single run of the task, not its own point
    (["resume=auto", "hydra.mode=MULTIRUN"],
     "resume=auto does not work in a multirun (-m): every job would continue the newest single "
     "run of task_name=train (multirun jobs are not searched), not its own sweep point. Resume "
     "a job as a single run: its overrides (<job dir>/.hydra/overrides.yaml) plus "
     "ckpt_path=<job dir>/checkpoints/last.ckpt"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing, and the test would measure "
                               "untrained weights: set trainer.max_epochs>=1, or evaluate a "
                               "checkpoint with train=false ckpt_path=<file.ckpt>"),
    (["+trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
])
def test_contradictory_run_modes_are_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, *overrides))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(("overrides", "fix"), [
    (["trainer.max_epochs=-1"], "+trainer.max_steps"),  # not in trainer/cpu.yaml: needs the +
    (["trainer.max_epochs=-1", "+trainer.max_steps=-1"], "trainer.max_steps")])
def test_the_fix_for_an_endless_run_is_an_override_hydra_accepts(overrides, fix, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, *overrides))
    assert str(err.value).endswith(f"the lr schedule is laid out over the run's length: set "
                                   f"{fix}=<optimizer steps> or trainer.max_epochs=<epochs>")


def test_a_384_px_preset_at_another_resolution_or_with_a_crop_is_flagged(tmp_path, caplog):
    validate(cfg_for(tmp_path, "model=cvt13_384"))  # data=embedded: 32 px
    assert ("model=cvt13_384 is the 384 px preset (its weights were fine-tuned at 384 px and are "
            "evaluated on images resized to 384 x 384, no crop) but data.image_size=32, data.eval_warp=false: "
            "set data.image_size=384 data.eval_warp=true") in caplog.text
    caplog.clear()
    # ImageNet's 224 px eval (short side to 438, centre crop 384) is not how the 384 px
    # weights were evaluated: the previous hint (crop_pct=1.0) still cropped the long side
    validate(cfg_for(tmp_path, "model=cvt13_384", "data=imagenet", "data.image_size=384",
                     "data.crop_pct=1.0"))
    assert "but data.image_size=384, data.eval_warp=false: set data.image_size=384 " in caplog.text
    caplog.clear()
    validate(cfg_for(tmp_path, "model=cvt13_384", "data=imagenet", "data.image_size=384",
                     "data.eval_warp=true"))
    validate(cfg_for(tmp_path, "experiment=finetune_cifar100"))
    validate(cfg_for(tmp_path, "model=cvt13"))
    assert "preset" not in caplog.text


def test_dataset_class_count_is_checked_against_num_classes_at_setup(tmp_path):
    cfg = cfg_for(tmp_path, "data.num_classes=12", "data.class_names=null")
    validate(cfg)  # nothing in the config alone says it is wrong
    dm = ImageDataModule(dict(cfg.data), dict(cfg.augment), seed=0)
    with pytest.raises(DataSourceError) as err:
        dm.setup("fit")
    assert str(err.value) == "embedded has 10 classes but data.num_classes=12; set data.num_classes=10"


@pytest.mark.parametrize(("overrides", "hint"), [
    (["model=cvt13", "trainer.max_epoch=3"],
     "Hint: 'trainer.max_epoch' is not a key of 'trainer'. Did you mean trainer.max_epochs?"),
    (["trainer.limit_train_batch=3"],
     "Hint: 'trainer.limit_train_batch' is not a key of 'trainer'. Did you mean +trainer.limit_train_batches"),
    # a Trainer argument the trainer config does not set (the fix an error message gives):
    # it was offered trainer.max_epochs, a different knob
    (["trainer.max_steps=100"],
     "Hint: 'trainer.max_steps' is a lightning.Trainer argument this trainer config does not "
     "set: add it with a +, as +trainer.max_steps=100"),
    (["data.batchsize=3"], "Hint: 'data.batchsize' is not a key of 'data'. Did you mean data.batch_size?"),
    (["model=cvt31"], "Hint: 'cvt31' is not an option of 'model'. Did you mean model=cvt21? Options: cvt13,"),
    (["model=cvt13,cvt_tny", "seed=1"], "Hint: 'cvt_tny' is not an option of 'model'. Did you mean model=cvt_tiny?"),
    (["sede=1"], "Hint: 'sede' is not a key of the top level. Did you mean seed"),
    # a key under a null node (the README's augment.randaugment.magnitude=6 without
    # augment=deit): was "'augment.randaugment.magnitude' is not a config key. Did you mean
    # augment.randaugment?", which it is, and which takes no number
    (["augment.randaugment.magnitude=6"],
     "Hint: 'augment.randaugment' is null in this config, so 'augment.randaugment.magnitude' "
     "does not exist yet: add it with a +, as +augment.randaugment.magnitude=6"),
    (["data=folder", "data.splits.val=valid"],
     "Hint: 'data.splits' is null in this config, so 'data.splits.val' does not exist yet: add it "
     "with a +, as +data.splits.val=valid"),
])
def test_override_hint_names_the_bad_override_and_close_matches(overrides, hint):
    assert override_hint(overrides, conf=CONF).startswith(hint)


def test_override_hint_is_silent_when_the_command_line_composes():
    assert override_hint(["model=cvt13", "+trainer.limit_train_batches=3", "-m", "seed=1,2"],
                         conf=CONF) is None


# docs/reliability.md, "Bad input is refused before any work": the config each example
# message of its table comes from (rows whose example needs a checkpoint file are left out)
DOC_EXAMPLE_CAUSES = {
    "wrong type": ["data.batch_size=abc"],
    "unknown key": ["+data.batchsize=32"],
    "image smaller than the model's total stride": ["model=cvt13", "data.image_size=8"],
    "class names vs classes": ["data.num_classes=12"],
    "dataset classes vs `num_classes` (at data setup)": ["data.num_classes=12", "data.class_names=null"],
    "contradictory modes": ["train=false"],
}


def doc_example_messages() -> dict[str, str]:
    """problem -> the example message the table quotes ('...' stands for left-out text)."""
    text = (CONF.parent / "docs" / "reliability.md").read_text()
    section = text.split("## Bad input is refused before any work", 1)[1]
    table = next(chunk for chunk in section.split("\n\n") if chunk.startswith("| problem"))
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    return {problem.split(" (a typo")[0].strip(): example.strip().split("`")[1].replace("\\|", "|")
            for problem, example in rows}  # (a | in a table cell is written \|)


@pytest.mark.parametrize("problem", DOC_EXAMPLE_CAUSES)
def test_the_reliability_doc_quotes_the_messages_the_checks_print(problem, tmp_path):
    cfg = cfg_for(tmp_path, *DOC_EXAMPLE_CAUSES[problem])
    with pytest.raises((ConfigError, DataSourceError)) as err:
        validate(cfg)
        ImageDataModule(dict(cfg.data), dict(cfg.augment), seed=0).setup("fit")
    quoted = doc_example_messages()[problem]
    pattern = ".*".join(re.escape(part.strip()) for part in quoted.split("..."))
    assert re.match(pattern, str(err.value)), (quoted, str(err.value))


def test_evaluating_a_backbone_says_it_has_no_classifier():
    # a transformers CvtModel (backbone) loads with a new head: the refusal said "its
    # classifier has 0 classes but the data 10", a classifier it does not have
    from types import SimpleNamespace

    from cvt_lab.models import LoadReport
    from cvt_lab.validate import check_pretrained_head

    report = LoadReport("out/backbone", "transformers", head_reset=True, checkpoint_classes=0)
    with pytest.raises(ConfigError) as err:
        check_pretrained_head(SimpleNamespace(net=SimpleNamespace(load_report=report)), 10)
    assert str(err.value).startswith(
        "train=false model.pretrained=out/backbone: it is a backbone without a classifier, so "
        "the test would run a new, untrained head.")


@pytest.mark.parametrize("choice, options", [
    ("data=_common", "cifar100, embedded, folder, imagenet"),
    ("model=_knobs", "cvt13, cvt13_384, cvt21, cvt21_384, cvt_tiny, cvt_w24, cvt_w24_384")])
def test_a_groups_shared_base_file_is_refused_as_an_option(tmp_path, choice, options):
    # `run.py --help` lists these files among the options; chosen, they composed without the
    # values an option sets and failed on a bare MissingMandatoryValue
    group = choice.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(
            f"{choice} is the base file the {group} options share, not an option: choose one "
            f"of {options}")):
        validate(cfg_for(tmp_path, choice))


@pytest.mark.parametrize("override, message", [
    ("optimized_metric=val/acc", "optimized_metric=val/acc is not a metric cvt-lab logs; did you "
                                 "mean optimized_metric=val/acc1 or optimized_metric=val/acc5? It "
                                 "logs: train/loss, "),
    ("callbacks.model_checkpoint.monitor=val/los", "callbacks.model_checkpoint.monitor=val/los is "
                                                   "not a metric cvt-lab logs while training; did "
                                                   "you mean callbacks.model_checkpoint.monitor="
                                                   "val/loss?"),
    # test/* are logged, but by the test after training: no checkpoint can be kept by them
    ("callbacks.model_checkpoint.monitor=test/acc1", "callbacks.model_checkpoint.monitor=test/acc1 "
                                                     "is not a metric cvt-lab logs while training; "
                                                     "did you mean callbacks.model_checkpoint."
                                                     "monitor=val/acc1? It logs while training: "
                                                     "train/loss, "),
])
def test_a_mistyped_metric_is_refused_before_training(override, message, tmp_path):
    # a monitor typo failed after the first epoch; an optimized_metric typo made every Optuna
    # trial train to the end and count as failed
    with pytest.raises(ConfigError) as err:
        validate(cfg_for(tmp_path, override))
    assert str(err.value).startswith(message)
    validate(cfg_for(tmp_path, "optimized_metric=test/acc1"))  # a test metric can be the objective
