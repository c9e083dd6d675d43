"""The `s2s` command. Orchestration lives here, so the library never imports Prefect."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from s2s.layout import EVAL_METRICS, INGEST_STATS, MODEL_DIR, MODEL_FILE, PARAMS_FILE, TOKENIZER_DIR, TRAIN_SUMMARY

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
        from flows import presets

        try:
            chosen = [presets.find(name) for name in args.preset]  # every one validated before params.yaml changes
            changed = presets.apply(workspace / PARAMS_FILE, chosen)
        except presets.PresetError as err:
            print(f"s2s: {err}", file=sys.stderr)
            return 2
        names = " + ".join(p.name for p in chosen)
        if changed:
            print(f"s2s: {PARAMS_FILE} <- preset {names}: {len(changed)} value(s) changed (git diff shows them):")
            print("\n".join(f"  {line}" for line in changed))
        else:
            print(f"s2s: {PARAMS_FILE} already has every value of preset {names}")

    from flows.pipeline import EXPECTED, Stop, detach_local_api, pipeline, quiet_console, request_stop  # Prefect only now

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
    print("\n" + "\n".join(_summary(state.result(), workspace)))
    return 0


def _summary(result: dict[str, Any], workspace: Path) -> list[str]:
    """The lines `s2s run` ends with: what ran, on how much data, how training went, the scores, the registry."""
    from s2s import summary

    reg, gate, training = result["registered"], result["gate"], result["training"]
    uri = reg["tracking_uri"].replace(f"sqlite:///{workspace}/", "sqlite:///")  # as params.yaml says it: relative
    status = "new version" if reg["created"] else "unchanged, not registered again"
    rows = [
        ("stages", ", ".join(f"{name} {'ran' if did else 'skipped'}" for name, did in result["stages_ran"].items())),
        ("data", summary.data_line(result["ingest"], training)),
        ("training", summary.training_line(training)),
        *summary.test_lines(result["metrics"]),
        ("metrics", f"{EVAL_METRICS}, {TRAIN_SUMMARY}, {INGEST_STATS}"),
        ("MLflow run", f"{reg['run_id']}  (mlflow ui --backend-store-uri {uri})"),
        ("model", f"models:/{reg['name']}/{reg['version']}  ({status})"),
        ("gate", f"{gate['decision']}: {gate.get('reason', '')}"),
    ]
    width = max(11, *(len(label) for label, _ in rows))  # the same columns run after run
    return ["s2s pipeline finished", *(f"  {label:<{width}} : {text}" for label, text in rows)]


def _presets(args: argparse.Namespace) -> int:
    from flows import presets

    found = presets.available()
    width = max(len(p.name) for p in found) + 2
    start = {name: machine for machine, name in presets.START_WITH.items()}
    for preset in found:
        sections = ", ".join(preset.values)
        print(f"{preset.name + (' *' if preset.name in start else ''):<{width}}  {preset.summary}  [{sections}]")
    picks = "; ".join(f"{name} on {machine}" for name, machine in start.items())
    print(f"\n* new here? start with {picks}: the best measured there. The recurrent recipes are the papers' own models "
          "(lower scores). A dataset (multi30k) combines with a recipe: --preset multi30k --preset transformer-cpu.")  # fmt: skip
    return 0


def _schedule(args: argparse.Namespace) -> int:
    """Serve the flow as a deployment with a cron schedule; this process runs the scheduled runs."""
    if (refused := _refuse_params(args)) is not None:
        return refused
    from prefect.deployments.runner import EntrypointType

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


def _translate(args: argparse.Namespace) -> int:
    """Translate arguments or a file with a registered model (any models:/ URI) or a local checkpoint."""
    from pydantic import ValidationError
    from tqdm import tqdm

    from s2s.config import EvaluateConfig, format_validation_error

    lines = Path(args.input).read_text(encoding="utf-8").splitlines() if args.input else args.text
    if not lines:
        print("s2s translate: give text arguments or --input FILE", file=sys.stderr)
        return 2
    # Only the options given: a registered model decodes as registered for the rest, a local one with the defaults.
    options = {"beam_size": args.beam, "length_penalty": args.length_penalty, "max_len_a": args.max_len_a,
               "max_len_b": args.max_len_b}  # fmt: skip
    options = {k: v for k, v in options.items() if v is not None}
    if args.n_best > 1:
        options["beam_size"] = max(options.get("beam_size", 1), args.n_best)
    try:
        cfg = EvaluateConfig(**options, batch_size=args.batch_size)
    except ValidationError as err:  # refused before any model loads, naming the option
        print(format_validation_error(err, EvaluateConfig, "s2s translate"), file=sys.stderr)
        return 2
    if ":/" in args.model:  # models:/NAME/VERSION, models:/NAME@ALIAS, runs:/..., file:/...
        import mlflow.pyfunc

        from s2s.config import RegistryConfig
        from s2s.registry import tracking_uri

        uri = tracking_uri(RegistryConfig(tracking_uri=args.tracking_uri), Path.cwd())
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        model = mlflow.pyfunc.load_model(args.model)
        schema = model.metadata.get_params_schema()
        if args.n_best > 1:
            options["n_best"] = args.n_best
        accepted = {p.name for p in schema.params} if schema is not None else set()
        if set(options) - accepted:
            print(f"s2s translate: {args.model} was registered before models took "
                  f"{', '.join('--' + k.replace('_', '-') for k in sorted(set(options) - accepted))}, which would be "
                  "ignored; it decodes as registered. Drop the option(s), or translate with a local model folder.",
                  file=sys.stderr)  # fmt: skip
            return 2

        def nbest(chunk: list[str]) -> list[list[str]]:
            out = model.predict(chunk, params=options or None)
            return [[str(t) for t in hyps] for hyps in out] if args.n_best > 1 else [[str(t)] for t in out]
    else:
        from s2s.translate import Translator

        translator = Translator.load(Path(args.model) / MODEL_FILE, Path(args.tokenizer))

        def nbest(chunk: list[str]) -> list[list[str]]:
            return translator.translate_nbest(chunk, args.n_best, cfg)

    def translate(chunk: list[str], offset: int) -> list[str]:
        hypotheses = nbest(chunk)
        if args.n_best == 1:
            return [hyps[0] for hyps in hypotheses]
        # One line per hypothesis: sentence number, rank, text.
        return [f"{offset + i}\t{rank}\t{text}" for i, hyps in enumerate(hypotheses, 1) for rank, text in enumerate(hyps, 1)]

    step = args.batch_size * 4  # several decoder batches per call: sorting by length stays effective
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(args.output).open("w", encoding="utf-8")) if args.output else sys.stdout
        bar = stack.enter_context(tqdm(total=len(lines), unit="sent", disable=not args.input, file=sys.stderr))
        for start in range(0, len(lines), step):
            chunk = lines[start : start + step]
            out.writelines(t + "\n" for t in translate(chunk, start))
            bar.update(len(chunk))
    return 0


def _registry(args: argparse.Namespace) -> tuple[object, str]:
    from s2s.config import load_params
    from s2s.registry import connect
    from s2s.task import resolve_registry

    workspace = Path(args.workspace).resolve()
    registry = resolve_registry(load_params(workspace / args.params))
    if args.tracking_uri:
        registry = registry.model_copy(update={"tracking_uri": args.tracking_uri})
    client, _ = connect(registry, workspace)
    return client, registry.name


def _promote(args: argparse.Namespace) -> int:
    from s2s.registry import promote

    client, name = _registry(args)
    replaced = promote(client, name, args.version, args.reason)  # type: ignore[arg-type]
    before = f"v{replaced.version}" if replaced is not None else "none"
    print(f"s2s: {name} champion is now v{args.version} (was {before}); `s2s rollback` undoes this")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """A registered version's data, tokenizer and model files back into this workspace, from the DVC remote."""
    import subprocess

    from s2s.registry import download_lineage

    workspace = Path(args.workspace).resolve()
    client, name = _registry(args)
    version = download_lineage(client, name, args.version, workspace)  # type: ignore[arg-type]
    pull = subprocess.run([sys.executable, "-m", "dvc", "pull", "--force"], cwd=workspace, env=_tools_env())
    if pull.returncode != 0:
        print(f"s2s restore: `dvc pull` failed (exit {pull.returncode}); is the DVC remote reachable? `dvc remote list`",
              file=sys.stderr)  # fmt: skip
        return 1
    commit = version.tags.get("git.commit", "unknown")
    print(
        f"s2s: {name} v{version.version} restored: dvc.lock, params.yaml and metrics from its run, data, tokenizer and model\n"
        f"     from the DVC remote. Its code is git commit {commit} (`git checkout {commit}`); "
        "`git checkout dvc.lock params.yaml metrics && dvc checkout` goes back."
    )
    return 0


def _tools_env(**extra: str) -> dict[str, str]:
    """This environment with the interpreter's own folder first on PATH: the tools a command starts (dvc, uvicorn)
    are then this environment's, whether or not it was activated."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _model_uri(model: str, args: argparse.Namespace) -> str:
    """models:/... and other URIs as given; a bare version or alias (`champion`, `3`) is one of params.yaml's model."""
    if ":/" in model:
        return model
    _, name = _registry(args)
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def _serve(args: argparse.Namespace) -> int:
    """`mlflow models serve` on a registered model, in this environment (no activation needed), on 127.0.0.1."""
    from s2s.config import RegistryConfig
    from s2s.registry import tracking_uri

    workspace = Path(args.workspace).resolve()
    uri = _model_uri(args.model, args)
    store = tracking_uri(RegistryConfig(tracking_uri=args.tracking_uri), workspace)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", args.host,
               "-p", str(args.port), "-w", str(args.workers)]  # fmt: skip
    print(f"s2s serve: {uri} from {store} on http://{args.host}:{args.port}/invocations (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, command, _tools_env(MLFLOW_TRACKING_URI=store))  # its signals and exit code are the server's


def _stack(args: argparse.Namespace) -> int:
    """The team stack on 127.0.0.1: up (idempotent) prints the environment to export, env prints it again, down stops it."""
    from flows import stack

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


def _export(args: argparse.Namespace) -> int:
    """A registered Transformer converted to CTranslate2 and registered as a new version of the same model."""
    from s2s.registry import export_alias, export_version, get_alias

    client, name = _registry(args)
    ref = args.model
    if ref.startswith("models:/"):  # models:/NAME/VERSION or models:/NAME@ALIAS
        name, _, ref = ref[len("models:/") :].replace("@", "/", 1).partition("/")
    if not name or not ref:
        print(f"s2s export: {args.model!r} is not models:/NAME/VERSION, models:/NAME@ALIAS, a version or an alias",
              file=sys.stderr)  # fmt: skip
        return 2
    staging = Path(args.workspace).resolve() / ".cache" / "export"
    exported = export_version(client, name, ref, args.quantization, staging)  # type: ignore[arg-type]
    state = "registered as" if exported.created else "was exported before:"
    alias = export_alias(args.quantization)
    aliased = get_alias(client, name, alias)  # type: ignore[arg-type]
    served = f"@{alias}" if aliased is not None and str(aliased.version) == exported.version else f"/{exported.version}"
    named = f", alias {alias}" if served.startswith("@") else ""
    print(f"s2s: {args.model} ({args.quantization}) {state} {name} v{exported.version}{named}; "
          f"serve it with `s2s serve models:/{name}{served}`")  # fmt: skip
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """A hyperparameter sweep: run its queued trials here, submit them to a work pool, or write its best as a preset."""
    from flows import sweep as flows_sweep
    from s2s import sweep

    workspace, space = Path(args.workspace).resolve(), Path(args.space)
    name = args.study or space.stem
    url = flows_sweep.storage_url(workspace, args.storage)
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
    study = flows_sweep.open_sweep(workspace, space, args.study, args.storage, args.trials)
    if args.submit:
        from prefect.deployments import run_deployment

        waiting = len(study.get_trials(deepcopy=False, states=(sweep.TrialState.WAITING,)))
        deployment = f"{flows_sweep.TRIAL_FLOW}/{args.submit}"
        for _ in range(waiting):  # the storage is not a parameter (it may hold a password): workers read S2S_SWEEP_STORAGE
            run_deployment(deployment, parameters={"study": name, "workspace": "."}, timeout=0)
        print(f"s2s: {waiting} flow run(s) of {deployment} submitted for study {name}; the pool's workers run them")
        return 0

    from flows.pipeline import Stop, detach_local_api, quiet_console, request_stop

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
    print(f"report: {flows_sweep.report_dir(workspace, name)} (and the sweep's MLflow run); "
          f"`s2s sweep {args.space} --best` writes the best as a preset")  # fmt: skip
    if Stop.signum:
        print(f"s2s: {signal.Signals(Stop.signum).name}: stopped; the interrupted trial is queued again, run again to go on",
              file=sys.stderr)  # fmt: skip
        return 128 + Stop.signum
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from s2s.registry import rollback

    client, name = _registry(args)
    old, new = rollback(client, name)  # type: ignore[arg-type]
    print(f"s2s: {name} champion rolled back from v{old} to v{new}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2s", description="Train, evaluate, register and use seq2seq translation models.")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's tracebacks and restatements of a failure too")
    sub = parser.add_subparsers(dest="command", required=True)

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

    ps = sub.add_parser("presets", help="list the presets: tested recipes and datasets for `s2s run --preset NAME`")
    ps.set_defaults(func=_presets)

    from s2s.config import EvaluateConfig

    local = EvaluateConfig()  # what a model folder decodes with; a registered model decodes as it was registered
    tr = sub.add_parser("translate", help="translate text with a registered model or a local checkpoint")
    tr.add_argument("text", nargs="*", help="sentences to translate (or --input)")
    tr.add_argument("--model", default=MODEL_DIR, help="models:/NAME/VERSION, models:/NAME@ALIAS, or a model folder "
                    f"(default: {MODEL_DIR})")  # fmt: skip
    tr.add_argument("--tokenizer", default=TOKENIZER_DIR, help=f"tokenizer folder for a model folder (default: {TOKENIZER_DIR})")
    tr.add_argument(
        "--tracking-uri", help="MLflow registry URI for models:/ URIs (default: $MLFLOW_TRACKING_URI, else the local store)"
    )
    tr.add_argument("--input", help="file with one sentence per line (default: the text arguments)")
    tr.add_argument("--output", help="write translations here (default: standard output)")
    registered = "default: as the registered model was evaluated; a model folder"
    tr.add_argument("--beam", type=int, help=f"beam size, 1 = greedy ({registered}: {local.beam_size})")
    tr.add_argument("--length-penalty", type=float, help=f"GNMT length-penalty alpha ({registered}: {local.length_penalty})")
    tr.add_argument("--max-len-a", type=float, help=f"output limit = a * source subwords + b ({registered}: {local.max_len_a})")
    tr.add_argument("--max-len-b", type=int, help=f"the b of that limit ({registered}: {local.max_len_b})")
    tr.add_argument("--n-best", type=int, default=1, help="hypotheses per sentence, one line each: number, rank, text "
                    "(default: 1)")  # fmt: skip
    tr.add_argument("--batch-size", type=int, default=64, help="sentences decoded together (default: 64)")
    tr.set_defaults(func=_translate)

    for name, func, text in (
        ("promote", _promote, "make a model version the champion"),
        ("rollback", _rollback, "give champion back to the version it replaced"),
        ("restore", _restore, "put a registered version's data, tokenizer and model files back (dvc.lock + dvc pull)"),
        ("export", _export, "register a Transformer version converted to CTranslate2 (fast CPU/GPU serving)"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name == "promote":
            cmd.add_argument("version", help="model version number")
            cmd.add_argument("--reason", default="promoted by hand with `s2s promote`", help="recorded in the version's tags")
        if name == "restore":
            cmd.add_argument("version", help="model version number or alias (e.g. champion)")
        if name == "export":
            from s2s.config import QUANTIZATIONS

            cmd.add_argument("model", help="models:/NAME/VERSION, models:/NAME@ALIAS, or a version or alias of "
                             "registry.model_name")  # fmt: skip
            cmd.add_argument("--quantization", choices=QUANTIZATIONS, default="int8",
                             help="weights as stored (default int8; float16/bfloat16 variants are for CUDA)")  # fmt: skip
        cmd.add_argument("--workspace", default=".", help="folder with params.yaml (for the registry settings)")
        cmd.add_argument("--params", default=PARAMS_FILE, help="params file inside the workspace (its registry section)")
        cmd.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: registry.tracking_uri of the params)")
        cmd.set_defaults(func=func)

    sv = sub.add_parser("serve", help="serve a registered model over HTTP (mlflow models serve, in this environment)")
    sv.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION, or an alias or version of params.yaml's model")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model (default: 1)")
    sv.add_argument("--workspace", default=".", help="folder with params.yaml, for its registry settings (default: .)")
    sv.add_argument("--params", default=PARAMS_FILE, help=f"params file inside the workspace (default: {PARAMS_FILE})")
    sv.add_argument("--tracking-uri", help="MLflow registry URI (default: $MLFLOW_TRACKING_URI, else the workspace's store)")
    sv.set_defaults(func=_serve)

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

    st = sub.add_parser("stack", help="PostgreSQL, S3 (moto), MLflow and Prefect servers and a worker on 127.0.0.1")
    st.add_argument("action", choices=["up", "env", "down"])
    st.add_argument("--dir", default=".stack", help="state folder: data, logs, generated credentials (default: .stack)")
    st.add_argument("--workspace", default=".", help="the checkout the worker runs flows in (default: .)")
    st.set_defaults(func=_stack)

    args = parser.parse_args(argv)
    # No usage telemetry: these machines often have no way out, and a failed send only adds noise.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
        if type(err).__name__ != "MlflowException":  # MLflow is imported lazily; match it by name
            raise
        print(f"s2s: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
