"""The `s2s` command. Orchestration lives here, so the library never imports Prefect."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

PRESETS = Path(__file__).resolve().parent.parent / "presets"


def _run(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace).resolve()
    if args.preset:
        preset = PRESETS / f"{args.preset}.yaml"
        if not preset.is_file():
            names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
            print(f"s2s: no preset {args.preset!r}; available: {', '.join(names)}", file=sys.stderr)
            return 2
        # A preset is a complete params file; writing it to params.yaml keeps DVC's view true.
        shutil.copyfile(preset, workspace / args.params)
        print(f"s2s: {args.params} <- presets/{args.preset}.yaml (git diff shows the change)")

    # No telemetry: the machines this runs on often have no way out, and a failed send only adds noise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import pipeline  # Prefect is imported only when a flow runs

    state = pipeline(workspace=str(workspace), params_file=args.params, force=args.force, return_state=True)
    if not state.is_completed():
        print(f"\ns2s: pipeline {state.name.lower()}: {state.message}", file=sys.stderr)
        return 1
    result = state.result()
    reg, metrics = result["registered"], result["metrics"]
    uri = reg["tracking_uri"]
    status = "new version" if reg["created"] else "unchanged, not registered again"
    stages = ", ".join(f"{name} {'ran' if ran else 'skipped'}" for name, ran in result["stages_ran"].items())
    print(
        "\n".join(
            [
                "",
                "s2s pipeline finished",
                f"  stages      : {stages}",
                f"  test BLEU   : {metrics['bleu']}  chrF {metrics['chrf']}"
                f"  (copying the source: BLEU {metrics['copy_source_bleu']})  -> {workspace / 'metrics/eval.json'}",
                f"  MLflow run  : {reg['run_id']}  (mlflow ui --backend-store-uri {uri})",
                f"  model       : models:/{reg['name']}/{reg['version']}  ({status})",
            ]
        )
    )
    return 0


def _translate(args: argparse.Namespace) -> int:
    from s2s.config import EvaluateConfig

    lines = Path(args.input).read_text(encoding="utf-8").splitlines() if args.input else args.text
    if not lines:
        print("s2s translate: give text arguments or --input FILE", file=sys.stderr)
        return 2
    if "://" in args.model or args.model.startswith("models:/"):
        import mlflow.pyfunc

        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
            mlflow.set_registry_uri(args.tracking_uri)
        outputs = list(mlflow.pyfunc.load_model(args.model).predict(lines))
    else:
        from s2s.translate import MODEL_FILE, Translator

        model_dir = Path(args.model)
        translator = Translator.load(model_dir / MODEL_FILE, Path(args.tokenizer))
        cfg = EvaluateConfig(beam_size=args.beam, batch_size=args.batch_size)
        if args.n_best > 1:  # one line per hypothesis: sentence number, rank, text
            nbest = translator.translate_nbest(lines, args.n_best, cfg)
            outputs = [f"{i}\t{rank}\t{text}" for i, hyps in enumerate(nbest, 1) for rank, text in enumerate(hyps, 1)]
        else:
            outputs = translator.translate(lines, cfg)
    text = "".join(o + "\n" for o in outputs)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2s", description="Train, evaluate, register and use seq2seq translation models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (DVC stages, MLflow registration, DVC push) as a Prefect flow")
    run.add_argument("--workspace", default=".", help="folder with dvc.yaml and params.yaml (default: .)")
    run.add_argument("--params", default="params.yaml", help="params file inside the workspace")
    run.add_argument("--preset", help="write presets/NAME.yaml to the params file first (e.g. multi30k)")
    run.add_argument("--force", action="store_true", help="re-run every stage even if DVC says nothing changed")
    run.set_defaults(func=_run)

    tr = sub.add_parser("translate", help="translate text with a registered model or a local checkpoint")
    tr.add_argument("text", nargs="*", help="sentences to translate")
    tr.add_argument("--model", default="artifacts/model", help="models:/NAME/VERSION, models:/NAME@ALIAS, or a model folder")
    tr.add_argument("--tokenizer", default="artifacts/tokenizer", help="tokenizer folder (with a model folder)")
    tr.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking/registry URI for models:/ URIs")
    tr.add_argument("--input", help="file with one sentence per line")
    tr.add_argument("--output", help="write translations here instead of stdout")
    tr.add_argument("--beam", type=int, default=1, help="beam size (local checkpoints)")
    tr.add_argument("--n-best", type=int, default=1, help="hypotheses per sentence (local checkpoints; beam >= n)")
    tr.add_argument("--batch-size", type=int, default=64)
    tr.set_defaults(func=_translate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call is noise
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
