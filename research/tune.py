"""`govrisk tune`: an Optuna study over the shared `train(cfg)`.

- **Search space**: `configs/search/<name>.yaml` (`SearchSpace`): the base experiment, the keys to tune
  (dotted experiment keys such as `model.params.optim.lr`, each a float / int / categorical range),
  settings fixed for every trial, tuning-only settings (no registration, a small ONNX parity check),
  the TPE sampler and the pruner (median or Hyperband). Pruning reports `val/auroc` every epoch through
  `optuna_integration.PyTorchLightningPruningCallback`.
- **Storage**: an Optuna RDB storage. By default a SQLite file in the work folder
  (`<work>/tuning/studies.db`); a `postgresql://` URL lets workers on several machines join one study
  (the psycopg 3 driver is filled in: `postgresql+psycopg://`). The study remembers its search space
  and base config; joining it with different ones is refused.
- **Budget**: `--trials N` is the study's total of finished (complete + pruned) trials, shared by all
  workers and across restarts. A worker stops once the study has N; a trial that starts while earlier
  running trials would already fill the budget is marked FAIL ("skipped") before training, so racing
  workers never finish more than N.
- **Trial 0** is the default config (the search space's keys at the base experiment's values), enqueued
  by whoever creates the study and never pruned: the gain of the best trial is measured against it.
- **Killed workers / resume**: every running trial sends a heartbeat every `heartbeat` seconds. A trial
  silent for 2 x heartbeat is marked FAIL by the next worker that starts a trial, and its parameters
  are enqueued again (`RetryHeartbeatStaleTrialCallback`). Rerunning the same command resumes the study until
  it has N finished trials.
- **Output**: the best trial as a complete experiment YAML (`<work>/tuning/<study>/best.yaml`) that
  `govrisk train --config` runs unchanged, and a report (best value, trials complete / pruned, parameter
  importances, gain over trial 0). `optuna-dashboard <storage URL>` browses the same study.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import sqlalchemy.exc
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from pydantic import Field, model_validator
from rich.console import Console

from govrisk.core.config import (
    StrictModel,
    apply_overrides,
    config_path,
    get_dotted,
    load_config,
    read_yaml,
    set_dotted,
    work_dir,
)
from govrisk.core.errors import UnknownName
from govrisk.core.hashing import sha256_json
from govrisk.training.config import experiment_from_dict, resolved_dict
from govrisk.training.lightning import set_threads
from govrisk.training.train import reuse_prepared, train

SPACE_ATTR = "govrisk:fingerprint"
DEFAULT_ROLE = "default"


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"need low < high (and low > 0 with log), got low={self.low} high={self.high}")
        return self


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"need low < high, got low={self.low} high={self.high}")
        return self


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    # Lists (e.g. dilations) are allowed: Optuna stores them as their JSON text.
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SamplerSpec(StrictModel):
    seed: int = Field(default=0, ge=0)
    n_startup_trials: int = Field(default=8, ge=1)  # random trials before TPE models the space
    multivariate: bool = True


class PrunerSpec(StrictModel):
    kind: Literal["median", "hyperband"]
    n_startup_trials: int = Field(default=5, ge=0)  # median: trials finished before any is pruned
    n_warmup_steps: int = Field(default=1, ge=0)  # median: epochs a trial always gets
    min_resource: int = Field(default=1, ge=1)  # hyperband: epochs of the smallest rung
    reduction_factor: int = Field(default=3, ge=2)  # hyperband


class SearchSpace(StrictModel):
    model: Literal["cnn", "tabular"]
    experiment: str  # base experiment: configs/experiment/<name>.yaml or a path
    metric: str = "val/auroc"  # maximised; logged per epoch by the Lightning module
    fixed: dict[str, Any] = Field(default_factory=dict)  # every trial, and the exported best config
    tuning_only: dict[str, Any] = Field(default_factory=dict)  # trials only; not in the best config
    params: dict[str, Param] = Field(min_length=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """`configs/search/<name>.yaml` (or a path), validated; errors name the key."""
    return load_config("search", name_or_path, SearchSpace)


def with_pruner(space: SearchSpace, **settings: Any) -> SearchSpace:
    """The search space with some `pruner` settings replaced (None: keep the file's), validated.
    What `govrisk tune --pruner-startup-trials / --pruner-warmup-steps` do: a short study (the
    demo's 4 trials) needs fewer complete trials before the median pruner may stop one."""
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return space
    if space.pruner.kind != "median":
        raise ValueError(
            f"{', '.join(given)}: settings of the median pruner; this search space uses {space.pruner.kind}"
        )
    return SearchSpace.model_validate(space.model_dump() | {"pruner": space.pruner.model_dump() | given})


def storage_url(url: str | None) -> str:
    """The SQLAlchemy URL Optuna gets: the default SQLite file, or a PostgreSQL URL on psycopg 3."""
    if url is None:
        path = work_dir() / "tuning" / "studies.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):  # SQLAlchemy's default driver (psycopg2) is not installed
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not url.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise ValueError(f"--storage {url!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return url


def _encode(value: Any) -> Any:
    """Optuna's categorical choices must be scalars: a list travels as its JSON text."""
    return json.dumps(value) if isinstance(value, list | tuple) else value


def _decode(spec: Any, value: Any) -> Any:
    if isinstance(spec, CategoricalParam) and isinstance(value, str):
        for choice in spec.choices:
            if isinstance(choice, list) and json.dumps(choice) == value:
                return choice
    return value


# --- the study --------------------------------------------------------------------------------------


@dataclass
class StudySpec:
    """Everything a worker needs: the search space, the base experiment (raw dict with overrides and
    the fixed settings applied), where the study lives and what it is called."""

    space: SearchSpace
    base_raw: dict[str, Any]
    experiment: str
    overrides: list[str]
    storage: str
    study: str
    heartbeat: int
    defaults: dict[str, Any] = field(default_factory=dict)  # trial 0: the base experiment's values

    @classmethod
    def create(
        cls,
        space: SearchSpace,
        *,
        experiment: str | None = None,
        overrides: list[str] | None = None,
        storage: str | None = None,
        study: str | None = None,
        heartbeat: int = 30,
    ) -> StudySpec:
        """Check the whole spec before anything runs: a bad key or value fails naming it."""

        experiment = experiment or space.experiment
        path = config_path("experiment", experiment)
        raw = read_yaml(path)
        for key, value in space.fixed.items():
            set_dotted(raw, key, value)
        # Command-line overrides win over the search space's fixed settings, never over a tuned key.
        tuned = [o for o in overrides or [] if o.split("=", 1)[0] in space.params]
        if tuned:
            raise ValueError(f"override {tuned[0]!r} sets a key the search space tunes")
        raw = apply_overrides(raw, list(overrides or []))
        cfg, params = experiment_from_dict(copy.deepcopy(raw), source=str(path))
        if cfg.model.kind != space.model:
            raise ValueError(
                f"experiment {experiment!r} trains {cfg.model.kind!r}, the search space tunes {space.model!r}"
            )
        resolved = resolved_dict(cfg, params)
        defaults = {}
        for key, spec in space.params.items():
            try:
                value = get_dotted(resolved, key)
            except KeyError:
                raise ValueError(
                    f"search space key {key!r} is not a key of experiment {experiment!r}"
                ) from None
            defaults[key] = _encode(value)
            _check_default(key, spec, value)
        spec_ = cls(
            space=space,
            base_raw=raw,
            experiment=str(experiment),
            overrides=list(overrides or []),
            storage=storage_url(storage),
            study=study or "",
            heartbeat=heartbeat,
            defaults=defaults,
        )
        # Default name: the experiment and a digest of space + config, so rerunning the same command
        # resumes its study and changing the data or the space starts a new one.
        spec_.study = spec_.study or f"{cfg.name}-{spec_.fingerprint()[:8]}"
        spec_.trial_config(defaults)  # the tuning-only settings must be valid too
        for key, spec in space.params.items():  # and every range end
            ends = spec.choices if isinstance(spec, CategoricalParam) else [spec.low, spec.high]
            for end in ends:
                spec_.trial_config(defaults | {key: _encode(end)})
        return spec_

    def trial_config(self, values: dict[str, Any], *, tuning: bool = True) -> tuple[Any, Any]:
        """(ExperimentConfig, model params) of one parameter set; `tuning` adds the tuning-only settings."""

        raw = copy.deepcopy(self.base_raw)
        if tuning:
            for key, value in self.space.tuning_only.items():
                set_dotted(raw, key, value)
        for key, value in values.items():
            set_dotted(raw, key, _decode(self.space.params[key], value))
        return experiment_from_dict(raw, source=f"study {self.study}")

    def fingerprint(self) -> str:
        """What makes two workers' trials comparable: the search space and the base config."""
        return sha256_json([self.space.model_dump(mode="json"), self.base_raw])

    def best_config_path(self) -> Path:
        return work_dir() / "tuning" / self.study / "best.yaml"


def _check_default(key: str, spec: Any, value: Any) -> None:
    """Trial 0 runs the default config, so the defaults must lie inside the search space."""
    if isinstance(spec, CategoricalParam):
        if value not in spec.choices:
            raise ValueError(
                f"search space {key!r}: the default {value!r} is not among the choices {spec.choices}"
            )
    elif not spec.low <= value <= spec.high:
        raise ValueError(f"search space {key!r}: the default {value!r} is outside [{spec.low}, {spec.high}]")


def _storage(spec: StudySpec) -> Any:

    engine: dict[str, Any] = {}
    if spec.storage.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 120}}  # wait for another worker's write, don't fail
    else:
        engine = {"pool_pre_ping": True}

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                spec.storage,
                engine_kwargs=engine,
                heartbeat_interval=spec.heartbeat,
                grace_period=2 * spec.heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together on an empty database race to create Optuna's tables; the
            # loser finds them made on its next try.
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _pruner(spec: StudySpec) -> Any:

    p = spec.space.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    _cfg, params = spec.trial_config(spec.defaults)
    return optuna.pruners.HyperbandPruner(
        min_resource=p.min_resource,
        max_resource=params.trainer.max_epochs,
        reduction_factor=p.reduction_factor,
    )


def open_study(spec: StudySpec, *, create: bool = True) -> tuple[Any, bool]:
    """(study, created_here). The creator stores the fingerprint and enqueues trial 0 (the defaults);
    creation is atomic in the database, so of several workers starting at once exactly one creates."""

    _quiet()
    storage = _storage(spec)
    s = spec.space.sampler
    created = False
    if create:
        try:
            study = optuna.create_study(storage=storage, study_name=spec.study, direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    if created:
        study.set_user_attr(SPACE_ATTR, spec.fingerprint())
        study.set_user_attr("govrisk:search_space", spec.space.model_dump(mode="json"))
        study.set_user_attr("govrisk:experiment", spec.experiment)
        study.set_user_attr("govrisk:overrides", spec.overrides)
        study.set_user_attr("govrisk:metric", spec.space.metric)
        study.enqueue_trial(spec.defaults, user_attrs={"role": DEFAULT_ROLE})
    # The creator's sampler has the configured seed (a single-worker study is reproducible); a worker
    # joining an existing study draws its own, or its random start-up trials would repeat the creator's.
    seed = s.seed if created else int.from_bytes(os.urandom(4), "little")
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate, constant_liar=True
    )
    try:
        study = optuna.load_study(
            study_name=spec.study, storage=storage, sampler=sampler, pruner=_pruner(spec)
        )
    except KeyError:
        raise UnknownName(f"no study {spec.study!r} in {spec.storage}") from None
    stored = study.user_attrs.get(SPACE_ATTR)
    for _ in range(120):  # a worker that lost the creation race waits for the creator's attributes
        if stored is not None:
            break
        time.sleep(0.5)
        stored = optuna.load_study(study_name=spec.study, storage=storage).user_attrs.get(SPACE_ATTR)
    if stored != spec.fingerprint():
        raise ValueError(
            f"study {spec.study!r} in {spec.storage} was created with another search space or base config; "
            "use another --study name (or the same --search, --experiment and overrides)"
        )
    return study, created


class SkippedTrial(RuntimeError):
    """Not trained: the study's trial budget is full, or the time budget would not let it finish."""


class _SkippedTrialFilter(logging.Filter):
    """Drops Optuna's two warnings (with a traceback) about a trial that raised SkippedTrial: the
    skip is on purpose and the worker prints one line for it (`run_worker`'s progress callback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SkippedTrial):
            self._skipped = record.getMessage().split(" ", 2)[1]  # "Trial 7 failed with parameters …"
            return False
        # the second warning, "Trial 7 failed with value None.", follows the first at once
        return not record.getMessage().startswith(f"Trial {getattr(self, '_skipped', '?')} failed with value")


@contextlib.contextmanager
def _quiet_skips() -> Iterator[None]:
    """Optuna's traceback for a SkippedTrial left out while the block runs (see `_SkippedTrialFilter`)."""
    logger = logging.getLogger("optuna.study._optimize")
    f = _SkippedTrialFilter()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def _finished(study: Any) -> int:

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def make_objective(spec: StudySpec, n_trials: int, deadline: float | None = None) -> Any:
    """The Optuna objective: one `train(cfg)` per trial, pruned on the search space's metric.
    `deadline` is a `time.monotonic()` value after which no trial should still be running."""

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def budget_left(trial: optuna.Trial) -> list[Any]:
        """Wait while earlier running trials could still fill the budget; raise SkippedTrial once it
        is full. Returns the study's trials. Stale trials of dead workers are failed while waiting,
        or a killed worker's trial would hold its place until the next trial starts somewhere."""
        while True:
            # This trial's own heartbeat first: a worker paused past the grace period (a suspended
            # process, a frozen VM) would otherwise fail its own running trial here, and Optuna would
            # then refuse its result and stop the worker ("Cannot tell a FAIL trial"). Studies are
            # always opened on an RDB storage with heartbeats (`open_study`).
            trial.storage.record_heartbeat(trial._trial_id)
            optuna.storages.fail_stale_trials(trial.study)
            others = trial.study.get_trials(deepcopy=False)
            done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in others)
            earlier = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in others)
            if done >= n_trials:
                trial.set_user_attr("skipped", "trial budget full")
                raise SkippedTrial(f"trial {trial.number}: the study already has {done} finished trials")
            if done + earlier < n_trials:
                return others
            time.sleep(min(spec.heartbeat, 5))

    def time_left(trial: optuna.Trial, others: list[Any]) -> None:
        """With a deadline, start no trial that a typical full trial (the median duration of the
        study's complete ones) would carry past it: `--timeout` bounds the wall time, not only the
        moment the last trial starts."""
        if deadline is None:
            return
        took = [(t.datetime_complete - t.datetime_start).total_seconds() for t in others
                if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]  # fmt: skip
        expected = statistics.median(took) if took else 0.0
        if time.monotonic() + expected > deadline:
            trial.set_user_attr("skipped", f"time budget: a trial takes about {expected:.0f} s")
            trial.study.stop()
            raise SkippedTrial(f"trial {trial.number}: about {expected:.0f} s would overrun the time budget")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        others = budget_left(trial)
        time_left(trial, others)
        values = {}
        for key, p in spec.space.params.items():
            if isinstance(p, FloatParam):
                values[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
            elif isinstance(p, IntParam):
                values[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
            else:
                values[key] = trial.suggest_categorical(key, [_encode(c) for c in p.choices])
        # The same parameters finished before (TPE can repeat a categorical corner): reuse, don't retrain.
        for t in others:
            if t.state == TrialState.COMPLETE and t.params == values and t.number != trial.number:
                trial.set_user_attr("duplicate_of", t.number)
                return float(t.value)
        cfg, params = spec.trial_config(values)
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-tune"})  # trial run folders apart from real runs
        is_default = trial.user_attrs.get("role") == DEFAULT_ROLE
        # Trial 0 is the yardstick every gain is measured against: it always runs to the end.
        callbacks = [] if is_default else [PyTorchLightningPruningCallback(trial, monitor=spec.space.metric)]
        t0 = time.perf_counter()
        result = train(cfg, params, callbacks=callbacks)
        m = result.metrics
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("epochs", json.loads((result.run_dir / "calibration.json").read_text())["epochs"])
        trial.set_user_attr(
            "metrics", {k: m[k] for k in ("train/auroc", "val/auroc", "oot/auroc", "oot/ks") if k in m}
        )
        return float(m[spec.space.metric])

    return objective


def _quiet() -> None:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial retries are stable in use; Optuna still labels them experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_worker(
    spec: StudySpec,
    *,
    trials: int,
    timeout: float | None = None,
    threads: int | None = None,
    echo: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Join (or create) the study and run trials until it has `trials` finished ones, the timeout
    passes, or the process is stopped; then write the best config and return the study report.

    With `echo`, a line per finished trial goes to `console` (a rich Console; default stdout): its
    state, its metric (a pruned trial's last reported value and the epoch it stopped at), the best
    so far and the worker's elapsed time; then a line with this worker's totals."""

    _quiet()
    set_threads(threads)
    study, created = open_study(spec)
    t0 = time.perf_counter()
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    metric = spec.space.metric
    ran: dict[str, int] = {}
    colour = {"complete": "green", "pruned": "yellow", "fail": "red"}
    if echo:
        p = spec.space.pruner
        pruning = (
            f"median pruner: a trial below the median from epoch {p.n_warmup_steps + 1} on stops, "
            f"once {p.n_startup_trials} trials are complete"
            if p.kind == "median"
            else f"hyperband pruner: rungs from {p.min_resource} epochs, reduction factor {p.reduction_factor}"
        )
        console.print(f"study {spec.study}: {_finished(study)} of {trials} trials finished; {pruning}; "
                      f"trial 0 is the default config", highlight=False)  # fmt: skip

    def progress(st: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        if not echo:
            return
        if t.user_attrs.get("skipped"):  # on purpose (budget full or no time left): one line, no traceback
            console.print(f"trial {t.number:3d}  skipped   {t.user_attrs['skipped']}", highlight=False)
            return
        state = t.state.name.lower()
        ran[state] = ran.get(state, 0) + 1
        if t.value is not None:
            value = f"{metric} {t.value:.4f}"
        elif t.intermediate_values:  # pruned: the value that lost against the median
            last = max(t.intermediate_values)
            value = f"{metric} {t.intermediate_values[last]:.4f}"
        else:
            value = f"{metric} {'-':6s}"
        epochs = t.user_attrs.get("epochs", max(t.intermediate_values, default=-1) + 1)
        done = [x for x in st.get_trials(deepcopy=False) if x.state == TrialState.COMPLETE]
        best = max(done, key=lambda x: x.value) if done else None
        note = " (default config)" if t.user_attrs.get("role") == DEFAULT_ROLE else ""
        note += (
            f" (same parameters as trial {t.user_attrs['duplicate_of']})"
            if "duplicate_of" in t.user_attrs
            else ""
        )
        console.print(
            f"trial {t.number:3d}  [{colour.get(state, 'white')}]{state:8s}[/]  {value}"
            f" after {epochs} epoch{'s' if epochs != 1 else ''}"
            f"  best {f'{best.value:.4f} (trial {best.number})' if best else '-'}"
            f"  [{time.perf_counter() - t0:.0f} s]{note}",
            highlight=False,
        )

    if _finished(study) < trials:
        with reuse_prepared(), _quiet_skips():
            study.optimize(
                make_objective(spec, trials, None if timeout is None else t0 + timeout),
                timeout=timeout,
                catch=(SkippedTrial,),
                callbacks=[
                    MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    progress,
                ],
                gc_after_trial=True,
            )
    summary = study_report(spec, study=study)
    summary["worker_seconds"] = time.perf_counter() - t0
    summary["created_study"] = created
    if echo:
        counts = ", ".join(f"{n} {state}" for state, n in ran.items()) or "no trial run"
        console.print(f"this worker: {counts} in {summary['worker_seconds']:.0f} s", highlight=False)
    return summary


def write_best_config(spec: StudySpec, best: Any) -> Path:
    """The best trial as a complete experiment YAML for `govrisk train --config` (tuning-only settings
    back at the base experiment's values, so the run registers like any other)."""

    values = {k: v for k, v in best.params.items() if k in spec.space.params}
    cfg, params = spec.trial_config(values, tuning=False)
    path = spec.best_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Best trial {best.number} of Optuna study {spec.study!r} ({spec.storage.split('@')[-1]}):\n"
        f"# {spec.space.metric} {best.value:.4f}. Train it with: govrisk train --config {path}\n"
    )
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(header + yaml.safe_dump(resolved_dict(cfg, params), sort_keys=False))
    tmp.replace(path)  # workers finishing together each write a whole file
    return path


def study_report(spec: StudySpec, *, study: Any = None) -> dict[str, Any]:
    """Best value, trials by state, pruned share, parameter importances, gain over the default config."""

    _quiet()
    if study is None:
        study, _ = open_study(spec, create=False)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    skipped = sum(bool(t.user_attrs.get("skipped")) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    finished = counts["complete"] + counts["pruned"]
    out: dict[str, Any] = {
        "study": spec.study,
        "storage": spec.storage.split("@")[-1],  # no credentials in printed output
        "metric": spec.space.metric,
        "trials": counts | {"finished": finished, "skipped": skipped},
        "pruned_share": counts["pruned"] / finished if finished else None,
        "workers": sorted({t.user_attrs.get("worker", "?") for t in trials if t.state != TrialState.WAITING}),
    }
    if not complete:
        return out | {"best": None}
    best = study.best_trial
    default = next((t for t in complete if t.user_attrs.get("role") == DEFAULT_ROLE), None)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    out["study_wall_seconds"] = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    out["best"] = {
        "number": best.number,
        "value": best.value,
        "params": best.params,
        "metrics": best.user_attrs.get("metrics", {}),
        "run_dir": best.user_attrs.get("run_dir"),
    }
    out["default"] = (
        {"number": default.number, "value": default.value, "metrics": default.user_attrs.get("metrics", {})}
        if default
        else None
    )
    out["gain_over_default"] = best.value - default.value if default else None
    try:
        importances = optuna.importance.get_param_importances(study)
        out["importances"] = {k: float(v) for k, v in importances.items()}
    except (RuntimeError, ValueError) as e:  # too few complete trials, or no parameter varied
        out["importances"] = {}
        out["importances_note"] = str(e)
    out["best_config"] = str(write_best_config(spec, best))
    return out


def print_report(summary: dict[str, Any], console: Any) -> None:
    """The study report as a few aligned lines (what `govrisk tune` and `--report` print)."""
    t = summary["trials"]
    console.print(f"study       {summary['study']} ({summary['storage']})")
    share = summary["pruned_share"]
    console.print(
        f"trials      {t['finished']} finished: {t['complete']} complete, {t['pruned']} pruned"
        f" ({share:.0%} pruned)"
        if share is not None
        else f"trials      {t['finished']} finished"
    )
    if t["fail"] or t["running"] or t["waiting"]:
        console.print(
            f"            {t['fail']} failed ({t['skipped']} skipped untrained), {t['running']} running, {t['waiting']} waiting"
        )
    if summary.get("best") is None:
        console.print("best        (no complete trial yet)")
        return
    b, d = summary["best"], summary.get("default")
    console.print(f"best        trial {b['number']}: {summary['metric']} {b['value']:.4f}"
                  f"  (OOT AUC {b['metrics'].get('oot/auroc', float('nan')):.4f})")  # fmt: skip
    if d:
        console.print(f"default     trial {d['number']}: {summary['metric']} {d['value']:.4f}"
                      f"  (OOT AUC {d['metrics'].get('oot/auroc', float('nan')):.4f})")  # fmt: skip
        console.print(
            f"gain        {summary['gain_over_default']:+.4f} {summary['metric']} over the default config"
        )
    for k, v in b["params"].items():
        console.print(f"  {k} = {v}")
    if summary["importances"]:
        console.print(
            "importance  "
            + ", ".join(f"{k.split('.')[-1]} {v:.2f}" for k, v in summary["importances"].items())
        )
    console.print(f"best config {summary['best_config']}")
    console.print(
        f"dashboard   optuna-dashboard {summary['storage'] if summary['storage'].startswith('sqlite') else '<storage URL>'}"
    )
