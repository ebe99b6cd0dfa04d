"""At the command line: Hydra's error plus our hint for unknown keys/options; a bad
ckpt_path is one line naming the path, with no traceback."""

from __future__ import annotations

from conftest import run_cli


def test_unknown_key_gets_hydras_error_and_a_close_match(tmp_path):
    done = run_cli("data.batchsize=32", f"paths.log_dir={tmp_path}", timeout=300)
    assert done.returncode == 1
    assert "Could not override 'data.batchsize'" in done.stderr  # Hydra's own message
    assert "Hint: 'data.batchsize' is not a key of 'data'. Did you mean data.batch_size?" in done.stderr


def test_unknown_group_option_gets_the_options_and_a_close_match(tmp_path):
    done = run_cli("model=cvt31", f"paths.log_dir={tmp_path}", timeout=300)
    assert done.returncode == 1
    assert "Hint: 'cvt31' is not an option of 'model'. Did you mean model=cvt21? Options: " in done.stderr


def test_missing_ckpt_path_is_one_line_without_traceback(tmp_path):
    done = run_cli(f"ckpt_path={tmp_path}/nope.ckpt", "logger=csv", f"paths.log_dir={tmp_path}",
                   timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1
    errors = [line for line in out.splitlines() if "ConfigError" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"ConfigError: ckpt_path={tmp_path}/nope.ckpt: no such file (give the path to a .ckpt "
        "file, e.g. logs/<task_name>/runs/<time>/checkpoints/last.ckpt)")
    assert "Traceback" not in out and "Hint:" not in out
    assert out.count("nope.ckpt: no such file") == 1  # said once
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_pretrained_weights_are_one_line_naming_the_key(tmp_path):
    done = run_cli(f"model.pretrained={tmp_path}/nope.pth", "logger=csv",
                   f"paths.log_dir={tmp_path}", timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1
    errors = [line for line in out.splitlines() if "ConfigError" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"ConfigError: model.pretrained={tmp_path}/nope.pth: no checkpoint at '{tmp_path}/nope.pth' "
        "(not a file, directory or Hub id)"), out[-2000:]
    assert "Traceback" not in out


def test_cfg_all_resolve_prints_the_run_dir_the_readme_promises(tmp_path):
    # README: `--cfg all --resolve` shows the resolved run dir (`--cfg hydra --resolve` cannot:
    # Hydra prints its node without the paths it refers to)
    done = run_cli("--cfg", "all", "--resolve", f"paths.log_dir={tmp_path}", "task_name=probe",
                   timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"dir: {tmp_path}/probe/runs/" in done.stdout
    assert not list(tmp_path.iterdir())  # printed, nothing run
