"""The one entry point: `python run.py [group=option ...] [key=value ...]` (add -m to sweep)."""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# light (no torch); importing it registers the config's resolvers before Hydra composes
from cvt_lab.validate import print_override_hint


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from cvt_lab.sweep import is_multirun, objective, run_job  # imported here: `--help`/`--cfg` stay fast
    from cvt_lab.train import CLEAR_ERRORS, run

    if logging.getLogger().handlers:  # Hydra's console and file handlers print Lightning's
        logging.getLogger("lightning").handlers.clear()  # messages: drop its second console copy
    try:
        metrics = run_job(cfg, run)  # writes metrics.json / failed.json into the run dir
    except CLEAR_ERRORS as err:
        if is_multirun():  # let Hydra record the failed job and go on with the sweep
            raise
        # the message names the problem and the fix: no traceback
        logging.getLogger("cvt_lab").error("%s: %s", type(err).__name__, err)
        sys.exit(1)
    return objective(cfg, metrics)  # optimized_metric's value, for the sweepers


if __name__ == "__main__":
    try:
        main()
    except SystemExit as stop:
        if stop.code not in (0, None):  # Hydra refused the command line? then add a hint
            print_override_hint(sys.argv[1:], Path(__file__).resolve().parent / "conf")
        raise
