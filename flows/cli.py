"""The `s2s` command. Orchestration lives here, so the library never imports Prefect."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from s2s import cli as commands
from s2s import dvc
from s2s.layout import PARAMS_FILE

# `--params` used to log one file while the DVC stages trained on params.yaml; it is refused rather than kept half true.
PARAMS_GONE = (
    "--params is no longer accepted: the DVC stages always read {params}, so another file would train on {params} while "
    "the run logged its own values. Copy it over {params} (`git diff` shows the change), or use --preset NAME|FILE."
)


def _refuse_params(args: argparse.Namespace) -> int | None:
    if args.params is not None:
        print(f"s2s {args.command}: " + PARAMS_GONE.format(params=PARAMS_FILE), file=sys.stderr)
        return 2
    return None


def _run(args: argparse.Namespace) -> int:
    if (refused := _refuse_params(args)) is not None:
        return refused
    workspace = Path(args.workspace).resolve()
    if args.preset:
        from s2s import machine, presets

        try:
            chosen = [presets.for_this_machine(name) for name in args.preset]  # each validated before params.yaml changes
            changed = presets.apply(workspace / PARAMS_FILE, chosen)
        except presets.PresetError as err:
            print(f"s2s: {err}", file=sys.stderr)
            return 2
        for preset in chosen:
            if preset.instead_of:
                units = " and ".join(machine.bf16_units())
                print(f"s2s: preset {preset.instead_of} -> {preset.name}: this CPU has {units}, and {preset.name} is "
                      f"{preset.instead_of} tuned for bf16 (--preset {presets.PRESETS_DIR / preset.instead_of}.yaml takes "
                      "the other)")  # fmt: skip
        names = " + ".join(p.name for p in chosen)
        if changed:
            print(f"s2s: {PARAMS_FILE} <- preset {names}: {len(changed)} value(s) changed (git diff shows them):")
            print("\n".join(f"  {line}" for line in changed))
        else:
            print(f"s2s: {PARAMS_FILE} already has every value of preset {names}")

    from flows.pipeline import EXPECTED, detach_local_api, pipeline, quiet_console  # Prefect only now
    from s2s.dvc import Stop, request_stop

    detach_local_api()
    if not args.verbose:
        quiet_console()
    for signum in (signal.SIGINT, signal.SIGTERM):  # a clean stop: the stage saves its state, its outputs go back
        signal.signal(signum, request_stop)
    state = pipeline(workspace=str(workspace), force=args.force, return_state=True)
    if Stop.signum:
        where = Stop.notice or f"stopped during {Stop.running or 'the run'}, its outputs back as before; run again to continue"
        how = " with `s2s run`" + (" (params.yaml holds the preset's values now: give no --preset)" if args.preset else "")
        print(f"\ns2s: {signal.Signals(Stop.signum).name}: {where}{how}", file=sys.stderr)
        return 128 + Stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        told = str(error) if isinstance(error, EXPECTED) else state.message  # an expected failure's message says it all
        print(f"\ns2s: run failed (exit code 1): {told}", file=sys.stderr)
        return 1
    from s2s.summary import run_lines

    print("\n" + "\n".join(run_lines(state.result(), workspace)))
    return 0


def _schedule(args: argparse.Namespace) -> int:
    """Serve the flow as a deployment with a cron schedule; this process runs the scheduled runs."""
    if (refused := _refuse_params(args)) is not None:
        return refused
    from prefect.types.entrypoint import EntrypointType

    from flows.pipeline import pipeline

    workspace = Path(args.workspace).resolve()
    print(f"s2s: serving deployment s2s-pipeline/{args.name}, cron {args.cron!r}, workspace {workspace}")
    pipeline.serve(
        name=args.name,
        cron=args.cron,
        parameters={"workspace": str(workspace), "force": args.force},
        description="Scheduled s2s retraining: DVC re-runs only what changed, so an unchanged run trains nothing.",
        tags=["s2s", "retraining"],
        limit=1,  # never two runs of this deployment writing one workspace at once
        pause_on_shutdown=False,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return 0


def _stack(args: argparse.Namespace) -> int:
    """The team stack on 127.0.0.1: up (idempotent) prints the environment to export, env prints it again, down stops it."""
    from ops import stack

    root, workspace = Path(args.dir).resolve(), Path(args.workspace).resolve()
    if args.action == "down":
        stack.down(root)
        print(f"s2s stack: stopped; its data stays in {args.dir} (remove the folder to start afresh)")
        return 0
    if args.action == "up":
        running = stack.up(root, workspace)
        stack.use_bucket_remote(running, workspace)
    elif (root / "stack.json").is_file():
        running = stack.Stack.load_or_create(root)
    else:
        print(f"s2s stack: no stack in {args.dir}; start one with `s2s stack up`", file=sys.stderr)
        return 1
    print(stack.exports(running))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """A hyperparameter sweep: run its queued trials here, submit them to a work pool, or write its best as a preset."""
    from flows import sweep as flows_sweep
    from s2s import sweep, sweep_runs

    workspace, space = Path(args.workspace).resolve(), Path(args.space)
    name = args.study or space.stem
    url = sweep_runs.storage_url(workspace, args.storage)
    if args.best is not None:
        study = sweep.load_study(name, url)
        out = Path(args.best or f"presets/{name}-best.yaml")
        out = out if out.is_absolute() else workspace / out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(sweep.best_preset(study, out.stem), encoding="utf-8")
        best = sweep.best_trial(study)
        print(f"s2s: best trial {best.number} of {name} (valid {study.user_attrs[sweep.METRIC_ATTR]} {best.value:.2f}) "
              f"-> {out}\n     apply it with `s2s run --preset {out}`")  # fmt: skip
        return 0
    study = sweep_runs.open_sweep(workspace, space, args.study, args.storage, args.trials)
    if args.submit:
        from optuna.trial import TrialState
        from prefect.deployments import run_deployment

        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        deployment = f"{flows_sweep.TRIAL_FLOW}/{args.submit}"
        for _ in range(waiting):  # the storage is not a parameter (it may hold a password): workers read S2S_SWEEP_STORAGE
            run_deployment(deployment, parameters={"study": name, "workspace": "."}, timeout=0)
        print(f"s2s: {waiting} flow run(s) of {deployment} submitted for study {name}; the pool's workers run them")
        return 0

    from flows.pipeline import detach_local_api, quiet_console
    from s2s.dvc import Stop, request_stop

    detach_local_api()
    if not args.verbose:
        quiet_console()
    for signum in (signal.SIGINT, signal.SIGTERM):  # the running trial stops cleanly and is queued again
        signal.signal(signum, request_stop)
    state = flows_sweep.sweep_flow(study=name, workspace=str(workspace), storage=args.storage, return_state=True)
    if not state.is_completed():
        print(f"\ns2s: sweep failed: {state.message}", file=sys.stderr)
        return 1
    report = state.result()["report"]
    rows = sweep.trial_rows(sweep.load_study(name, url))
    print("\n" + sweep.markdown_table(rows))
    if report["best_trial"] is not None:
        print(f"best: trial {report['best_trial']}, valid {report['best_value']:.2f}: {report['best_params']}")
    print(f"trials {report['trials']}, {report['hours']} h; pruning saved about {report['hours_saved_by_pruning']} h")
    print(f"report: {sweep_runs.report_dir(workspace, name)} (and the sweep's MLflow run); "
          f"`s2s sweep {args.space} --best` writes the best as a preset")  # fmt: skip
    if Stop.signum:
        print(f"s2s: {signal.Signals(Stop.signum).name}: stopped; the interrupted trial is queued again, run again to go on",
              file=sys.stderr)  # fmt: skip
        return 128 + Stop.signum
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2s",
        description="Train, evaluate, register and serve sequence-to-sequence models (translation, summarisation, any "
        "text-to-text task).",
    )
    parser.add_argument("--verbose", action="store_true", help="show Prefect's tracebacks and restatements of a failure too")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    commands.add_to(sub)
    _add_sweep(sub)
    _add_stack(sub)
    return parser


def _add_run(sub: Any) -> None:
    """`run` and `schedule`."""
    run = sub.add_parser("run", help="run the whole pipeline (DVC stages, MLflow registration, DVC push) as a Prefect flow")
    run.add_argument("--workspace", default=".", help="folder with dvc.yaml and params.yaml (default: .)")
    run.add_argument("--params", help=argparse.SUPPRESS)  # refused with a reason: see PARAMS_GONE
    run.add_argument(
        "--preset",
        action="append",
        help=f"apply presets/NAME.yaml (`s2s presets` lists them) or a params FILE over {PARAMS_FILE} first; "
        "repeat to combine (a later one wins a key both set)",
    )
    run.add_argument("--force", action="store_true", help="re-run every stage even if DVC says nothing changed")
    run.set_defaults(func=_run)

    sch = sub.add_parser("schedule", help="serve the pipeline as a Prefect deployment on a cron schedule (runs until stopped)")
    sch.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *" for 03:00 every day')
    sch.add_argument("--name", default="s2s-retrain", help="deployment name (default: s2s-retrain)")
    sch.add_argument("--workspace", default=".", help="folder with dvc.yaml and params.yaml (default: .)")
    sch.add_argument("--params", help=argparse.SUPPRESS)
    sch.add_argument("--force", action="store_true", help="retrain on every run, even when nothing changed")
    sch.set_defaults(func=_schedule)


def _add_sweep(sub: Any) -> None:
    sw = sub.add_parser("sweep", help="hyperparameter search (Optuna): trials run the real stages, selected on validation")
    sw.add_argument("space", help="search-space file (sweeps/NAME.yaml): the swept params, fixed ones, trials, pruner")
    sw.add_argument("--workspace", default=".", help="checkout whose params.yaml is the base of every trial (default: .)")
    sw.add_argument("--study", help="study name (default: the search-space file's name); the same name continues it")
    sw.add_argument(
        "--storage", help="study database URL (default: $S2S_SWEEP_STORAGE, else sqlite:///sweeps.db in the workspace)"
    )
    sw.add_argument("--trials", type=int, help="queue trials until the study holds this many (default: the file's `trials`)")
    sw.add_argument("--submit", metavar="DEPLOYMENT", help="queue, then submit one flow run per trial to this deployment of "
                    "the s2s-sweep-trial flow (prefect.yaml: s2s-sweep-trial); pool workers run them")  # fmt: skip
    sw.add_argument("--best", nargs="?", const="", metavar="FILE", help="write the best trial's recipe as a preset "
                    "(default presets/STUDY-best.yaml); runs nothing")  # fmt: skip
    sw.set_defaults(func=_sweep)


def _add_stack(sub: Any) -> None:
    st = sub.add_parser("stack", help="PostgreSQL, S3 (moto), MLflow and Prefect servers and a worker on 127.0.0.1")
    st.add_argument("action", choices=["up", "env", "down"])
    st.add_argument("--dir", default=".stack", help="state folder: data, logs, generated credentials (default: .stack)")
    st.add_argument("--workspace", default=".", help="the checkout the worker runs flows in (default: .)")
    st.set_defaults(func=_stack)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # No usage telemetry: these machines often have no way out, and a failed send only adds noise.
    dvc.quiet_telemetry()
    # The temporary local API's first start in a new environment compiles and migrates its database: more than
    # Prefect's 20 s on 2 cores (seen on a fresh clone's first `make run`), so allow longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call is noise
    from s2s.errors import S2SError

    try:
        return int(args.func(args))
    except S2SError as err:
        print(f"s2s: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # MLflow is imported lazily: if not, it raised nothing
        if mlflow_errors is None or not isinstance(err, mlflow_errors.MlflowException):
            raise
        print(f"s2s: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
