"""`govrisk tune`: search spaces, a killed-and-resumed SQLite study, two workers on one PostgreSQL study,
and the best trial's config trained unchanged by `govrisk train`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import sqlalchemy
import yaml
from conftest import need_postgres
from optuna.trial import TrialState
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.research.tune import (
    SkippedTrial,
    StudySpec,
    load_search_space,
    make_objective,
    open_study,
    storage_url,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the storage URL form `govrisk tune --storage` takes
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A tiny, fast CNN: two float parameters, so no two trials can share a parameter set.
TINY_SPACE = {
    "model": "cnn",
    "experiment": "county_cnn",
    "fixed": {
        "model.params.trainer.max_epochs": 2,
        "model.params.trainer.patience": 1,
        "model.params.trainer.batch_size": 512,
        "model.params.net.hidden": 8,
        "model.params.net.dilations": [1, 2, 4],
        "model.params.net.static_hidden": 16,
        "model.params.net.static_to_sequence": 0,
        "model.params.net.stem_hidden": 0,
        "model.params.net.static_bins": 0,
        "model.params.net.head_hidden": 16,
        "model.params.net.ensemble_size": 1,
    },
    "tuning_only": {"register_model": False, "parity_rows": 200},
    "params": {
        "model.params.optim.lr": {"type": "float", "low": 5e-4, "high": 1e-2, "log": True},
        "model.params.net.dropout": {"type": "float", "low": 0.0, "high": 0.4},
    },
    "sampler": {"seed": 0, "n_startup_trials": 3},
    "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
}


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_search.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def tune_command(space: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "govrisk.cli", "tune", "--search", str(space), "--threads", "1",
            *extra, f"data.dataset={data}", "data.generate=null"]  # fmt: skip


def env(work: Path) -> dict[str, str]:
    return os.environ | {"GOVRISK_WORK": str(work), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("name", ["cnn", "tabular"])
def test_shipped_search_spaces_are_valid_and_contain_the_defaults(name: str) -> None:
    space = load_search_space(name)
    spec = StudySpec.create(space)  # validates every key, the defaults and every range end
    assert set(spec.defaults) == set(space.params)
    assert spec.study.startswith(f"county-{name}-")


def test_bad_search_spaces_fail_naming_the_key(tmp_path: Path) -> None:
    bad_key = TINY_SPACE | {"params": {"model.params.net.hiden": {"type": "categorical", "choices": [8, 16]}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad_key))
    with pytest.raises(ValueError, match=r"model\.params\.net\.hiden"):
        StudySpec.create(load_search_space(path))
    outside = TINY_SPACE | {"params": {"model.params.optim.lr": {"type": "float", "low": 0.1, "high": 0.5}}}
    path.write_text(yaml.safe_dump(outside))
    with pytest.raises(ValueError, match=r"default 0\.002 is outside"):
        StudySpec.create(load_search_space(path))
    path.write_text(yaml.safe_dump(TINY_SPACE | {"pruner": {"kind": "asha"}}))
    with pytest.raises(ValueError, match=r"pruner\.kind"):
        load_search_space(path)
    result = CliRunner().invoke(app, ["tune", "--model", "forest"])
    assert result.exit_code == 2 and "forest" in result.output
    result = CliRunner().invoke(app, ["tune", "--model", "cnn", "model.params.optim.lr=0.1"])
    assert result.exit_code == 2 and "model.params.optim.lr" in result.output
    assert storage_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    with pytest.raises(ValueError, match="ftp://x"):
        storage_url("ftp://x")


def test_a_worker_paused_past_the_grace_period_keeps_its_own_trial(
    tmp_path: Path, tiny_space: Path, tiny_county_path: Path
) -> None:
    """A worker resumed after a pause longer than the grace period (a suspended process, a frozen VM)
    refreshes its own heartbeat before it fails stale trials: it used to fail its own running trial,
    and Optuna then refused the trial's result and stopped the worker ("Cannot tell a FAIL trial")."""
    spec = StudySpec.create(
        load_search_space(tiny_space),
        overrides=[f"data.dataset={tiny_county_path}", "data.generate=null"],
        storage=f"sqlite:///{tmp_path}/studies.db",
        study="paused",
        heartbeat=1,
    )
    study, _ = open_study(spec)
    trial = study.ask()
    trial.storage.record_heartbeat(trial._trial_id)  # as Optuna's heartbeat thread does at the start
    time.sleep(2.5)  # paused past the grace period (2 x heartbeat)
    with pytest.raises(SkippedTrial):  # a budget of 0 trials: the objective stops before training
        make_objective(spec, 0)(trial)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.RUNNING


def test_killed_sqlite_study_resumes_to_its_budget(
    tmp_path: Path, tiny_space: Path, tiny_county_path: Path
) -> None:
    """A worker is killed mid-trial; rerunning the same command fails the stale trial (no heartbeat
    for 2 s), runs its parameters again and finishes the budget; then the best config trains unchanged."""
    work, n = tmp_path / "work", 5
    cmd = tune_command(
        tiny_space, tiny_county_path, "--trials", str(n), "--heartbeat", "1", "--study", "resume"
    )
    url = f"sqlite:///{work}/tuning/studies.db"  # the default storage of that work folder
    (work / "tuning").mkdir(parents=True)
    worker = subprocess.Popen(cmd, env=env(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The worker is frozen (SIGSTOP) while the study is read, so that "a trial is running with its
        # parameters" still holds when the kill lands: the tiny trials last about a second, and a trial
        # that finished between the read and the kill would leave nothing to resume.
        deadline = time.monotonic() + 300
        while True:
            time.sleep(0.1)
            if worker.poll() is not None:
                pytest.fail(f"the worker ended (rc {worker.returncode}) before it could be killed mid-trial:\n"
                            + worker.communicate()[0][-3000:])  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail("the first worker did not finish two trials in 300 s")
            worker.send_signal(signal.SIGSTOP)
            try:
                trials = optuna.load_study(study_name="resume", storage=url).get_trials(deepcopy=False)
            except (KeyError, sqlalchemy.exc.OperationalError):
                worker.send_signal(signal.SIGCONT)
                continue  # not created yet, or frozen while it held the write lock
            finished = sum(t.state in FINISHED for t in trials)
            # mid-trial: running with all its parameters drawn. A trial killed before it draws them
            # all is retried with the drawn ones fixed and the rest drawn afresh (seen in CI: killed
            # between dropout and lr), which the equality of parameters below cannot check.
            drawn = [
                t
                for t in trials
                if t.state == TrialState.RUNNING and set(t.params) == set(TINY_SPACE["params"])
            ]
            if finished >= 2 and drawn:
                worker.send_signal(signal.SIGKILL)  # no clean-up: the running trial is left RUNNING
                break
            worker.send_signal(signal.SIGCONT)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    killed_at = optuna.load_study(study_name="resume", storage=url).get_trials(deepcopy=False)
    left_running = [t for t in killed_at if t.state == TrialState.RUNNING]
    finished_before = {t.number for t in killed_at if t.state in FINISHED}
    assert left_running and 2 <= len(finished_before) < n

    time.sleep(2.5)  # past the grace period (2 x heartbeat): the killed trial is stale now
    done = subprocess.run(cmd, env=env(work), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = optuna.load_study(study_name="resume", storage=url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n
    assert finished_before <= {t.number for t in finished}  # nothing finished was run again
    stale = trials[left_running[0].number]
    assert stale.state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
    assert retried and retried[0].params == stale.params and retried[0].state in FINISHED
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert f"{n} finished" in done.stdout and "gain" in done.stdout

    # The best trial as a config that `govrisk train` runs unchanged.
    best_yaml = work / "tuning" / "resume" / "best.yaml"
    best = optuna.load_study(study_name="resume", storage=url).best_trial
    cfg = yaml.safe_load(best_yaml.read_text())
    assert cfg["model"]["params"]["optim"]["lr"] == pytest.approx(best.params["model.params.optim.lr"])
    assert cfg["register_model"] is True and cfg["parity_rows"] == 10_000  # tuning-only settings undone
    trained = CliRunner().invoke(app, ["train", "--config", str(best_yaml)])  # in-process: imports paid
    assert trained.exit_code == 0, trained.output
    val_auc = float(trained.output.split("val   AUC")[1].split()[0])
    assert val_auc == pytest.approx(best.value, abs=1e-4)  # same config, same seed, same model

    report = CliRunner().invoke(app, ["tune", "--search", str(tiny_space), "--study", "resume", "--report",
                                      "--storage", url, f"data.dataset={tiny_county_path}", "data.generate=null"])  # fmt: skip
    assert report.exit_code == 0, report.output
    assert "pruned" in report.output and "importance" in report.output and "default" in report.output

    # optuna-dashboard reads the study (its WSGI app, called in-process: no server, no port).
    import optuna_dashboard

    dashboard = optuna_dashboard.wsgi(url)
    study_id = optuna.load_study(study_name="resume", storage=url)._study_id
    environ: dict = {}
    setup_testing_defaults(environ)
    environ |= {"PATH_INFO": f"/api/studies/{study_id}", "QUERY_STRING": "after=0"}
    status: list[str] = []
    body = b"".join(dashboard(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"] and json.loads(body)["name"] == "resume"
    assert len(json.loads(body)["trials"]) == len(trials)


@pytest.mark.postgres
@pytest.mark.slow  # two worker processes: `make test-slow`
def test_two_workers_share_one_postgres_study(
    tmp_path: Path, tiny_space: Path, tiny_county_path: Path
) -> None:
    need_postgres()
    study, n = f"test-two-workers-{uuid.uuid4().hex[:8]}", 5
    cmd = tune_command(
        tiny_space, tiny_county_path, "--trials", str(n), "--storage", PG_URL, "--study", study
    )
    url = storage_url(PG_URL)
    try:
        workers = [
            subprocess.Popen(
                cmd, env=env(tmp_path / f"w{i}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for i in range(2)
        ]
        outputs = [w.communicate(timeout=300)[0] for w in workers]
        for w, text in zip(workers, outputs, strict=True):
            assert w.returncode == 0, text[-3000:]
        trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == n  # the budget is the study's, not each worker's
        assert len({t.user_attrs["worker"] for t in finished}) == 2  # both contributed
        assert len({t.number for t in finished}) == n
        params = [tuple(sorted(t.params.items())) for t in finished]
        assert len(set(params)) == n  # no parameter set ran twice
        assert len({t.user_attrs["run_dir"] for t in finished if t.state == TrialState.COMPLETE}) == sum(
            t.state == TrialState.COMPLETE for t in finished
        )
        assert (
            sum(t.user_attrs.get("role") == "default" for t in trials) == 1
        )  # one trial 0, not one per worker
        assert not [t for t in trials if t.state == TrialState.RUNNING]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=url)


def test_trials_of_one_worker_prepare_the_data_once(tiny_county_path: Path) -> None:
    from govrisk.training.config import experiment_from_dict
    from govrisk.training.train import prepare, reuse_prepared

    raw = {"name": "prep", "seed": 0, "data": {"dataset": str(tiny_county_path), "features": "county"},
           "split": {"kind": "vintage", "val_start": "2023-01", "oot_start": "2023-07"},
           "model": {"kind": "cnn", "params": {}}}  # fmt: skip
    cfg, _ = experiment_from_dict(raw)
    other, _ = experiment_from_dict(raw | {"split": raw["split"] | {"oot_start": "2023-10"}})
    with reuse_prepared():
        first = prepare(cfg)
        assert prepare(cfg) is first  # the same objects: nothing read or featurised again
        assert prepare(other) is not first and prepare(other)[2]["oot"].size < first[2]["oot"].size
    assert prepare(cfg) is not first  # outside the block every call prepares afresh


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked by hand, not by optimize
def test_the_configured_pruner_stops_a_clearly_bad_trial_after_its_first_epoch(
    tmp_path: Path, tiny_space: Path, tiny_county_path: Path
) -> None:
    """TINY_SPACE's median pruner comes from its YAML (n_startup_trials 2, n_warmup_steps 0). Two
    complete trials at a val/auroc no tiny CNN reaches (0.99 at every epoch) make the next, real
    trial clearly bad: Lightning's pruning callback stops it after epoch 1. With n_startup_trials 3
    (what `govrisk tune --pruner-startup-trials 3` sets) two complete trials prune nothing."""
    from optuna.distributions import FloatDistribution

    from govrisk.research.tune import with_pruner

    space = TINY_SPACE["params"]
    dists = {k: FloatDistribution(p["low"], p["high"], log=p.get("log", False)) for k, p in space.items()}

    def study_with_two_strong_trials(search, name: str):
        spec = StudySpec.create(search, overrides=[f"data.dataset={tiny_county_path}", "data.generate=null"],
                                storage=f"sqlite:///{tmp_path}/studies.db", study=name)  # fmt: skip
        study, _ = open_study(spec)
        default = study.ask()  # trial 0, the default config: never pruned, so out of the way here
        assert study.trials[default.number].user_attrs["role"] == "default"
        study.tell(default, state=TrialState.FAIL)
        for lr in (1e-3, 2e-3):
            study.add_trial(optuna.trial.create_trial(
                params={"model.params.optim.lr": lr, "model.params.net.dropout": 0.1}, distributions=dists,
                value=0.99, intermediate_values={0: 0.99, 1: 0.99}))  # fmt: skip
        return spec, study

    search = load_search_space(tiny_space)
    assert (search.pruner.n_startup_trials, search.pruner.n_warmup_steps) == (2, 0)
    spec, study = study_with_two_strong_trials(search, "prunes")
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        make_objective(spec, 10)(trial)
    reported = study.trials[trial.number].intermediate_values
    assert list(reported) == [0] and reported[0] < 0.99  # stopped after its first of two epochs

    later = with_pruner(search, n_startup_trials=3)
    assert later.pruner.n_startup_trials == 3 and later.pruner.n_warmup_steps == 0
    _, study = study_with_two_strong_trials(later, "waits")
    trial = study.ask()
    trial.report(0.5, step=0)
    assert not trial.should_prune()  # two complete trials are fewer than the three it waits for
    trial.report(0.5, step=1)
    assert not trial.should_prune()
    with pytest.raises(ValueError, match="hyperband"):
        with_pruner(load_search_space("tabular"), n_startup_trials=2)
    with pytest.raises(ValueError, match="n_warmup_steps"):
        with_pruner(search, n_warmup_steps=-1)
