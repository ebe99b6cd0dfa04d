"""The Optuna sampler of ``hparams_search=optuna``: TPE, seeded, continuing a resumed study.

The sweeper builds its sampler from ``hydra.sweeper.sampler`` in every search. Seeded with
``seed`` alone, a search that extends a stored study (``hydra.sweeper.storage.path=<old
sweep dir>/optuna.db``) drew the stored first trials' params again, one for one. This sampler
seeds its TPE with ``seed + the trials already in the study`` when it first sees the study:
a new study draws exactly as ``TPESampler(seed=seed)``, an extended one goes on with new params.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class ResumingTPESampler(BaseSampler):
    """``TPESampler(seed=seed + n, **tpe)``, n being the number of the study's first trial
    that this sampler sees (its trials so far). ``tpe``: TPESampler's other arguments."""

    def __init__(self, seed: int | None = None, **tpe: Any) -> None:
        self.seed, self.tpe = seed, tpe
        self._tpe: TPESampler | None = None

    def _sampler(self, trial: FrozenTrial) -> TPESampler:
        if self._tpe is None:
            seed = None if self.seed is None else self.seed + trial.number
            self._tpe = TPESampler(seed=seed, **self.tpe)
        return self._tpe

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name,
                                                       param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._sampler(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.seed = None
        if self._tpe is not None:
            self._tpe.reseed_rng()


__all__ = ["ResumingTPESampler"]
