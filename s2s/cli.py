"""The `s2s` commands that need no Prefect: generate (alias translate), presets, promote, rollback, restore, export, serve.

`flows.cli` builds the `s2s` command line from these and its own (run, schedule, sweep, stack); each handler
takes the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s2s import dvc
from s2s.layout import MODEL_DIR, MODEL_FILE, PARAMS_FILE, TOKENIZER_DIR


def _presets(args: argparse.Namespace) -> int:
    from s2s import presets

    found = presets.available()
    width = max(len(p.name) for p in found) + 2
    start = {name: machine for machine, name in presets.START_WITH.items()}
    for preset in found:
        sections = ", ".join(preset.values)
        print(f"{preset.name + (' *' if preset.name in start else ''):<{width}}  {preset.summary}  [{sections}]")
    picks = "; ".join(f"{name} on {machine}" for name, machine in start.items())
    print(f"\n* new here? start with {picks}: the best measured there. The recurrent recipes are the papers' own models "
          "(lower scores). A dataset (multi30k) combines with a recipe: --preset multi30k --preset transformer-cpu. "
          f"On a CPU with bf16 matrix units (AMX, AVX-512 BF16) --preset NAME takes NAME{presets.BF16_VARIANT} "
          "where there is one.")  # fmt: skip
    return 0


Decoder = Callable[[list[str]], list[list[str]]]  # inputs -> their n-best outputs


def _generate(args: argparse.Namespace) -> int:
    """Outputs for arguments or a file (translations, summaries...) with a registered model (any models:/ URI) or a
    local checkpoint; `s2s translate` is the same command."""
    from pydantic import ValidationError

    from s2s.config import DecodingConfig, format_validation_error

    command = f"s2s {args.command}"  # generate, or translate as it was called
    lines = Path(args.input).read_text(encoding="utf-8").splitlines() if args.input else args.text
    if not lines:
        print(f"{command}: give text arguments or --input FILE", file=sys.stderr)
        return 2
    # Only the options given: a registered model decodes as registered for the rest, a local one with the defaults.
    options = {"beam_size": args.beam, "length_penalty": args.length_penalty, "max_len_a": args.max_len_a,
               "max_len_b": args.max_len_b, "min_len": args.min_len, "no_repeat_ngram": args.no_repeat_ngram}  # fmt: skip
    options = {k: v for k, v in options.items() if v is not None}
    try:
        cfg = DecodingConfig(**options, batch_size=args.batch_size)
    except ValidationError as err:  # refused before any model loads, naming the option
        print(format_validation_error(err, DecodingConfig, command), file=sys.stderr)
        return 2
    if args.n_best > 1:
        options["beam_size"] = cfg.beam_for(args.n_best)
    if ":/" in args.model:  # models:/NAME/VERSION, models:/NAME@ALIAS, runs:/..., file:/...
        decoder = _registered_decoder(args, options)
        if decoder is None:
            return 2
    else:
        from s2s.translate import Translator

        translator = Translator.load(Path(args.model) / MODEL_FILE, Path(args.tokenizer))

        def decoder(chunk: list[str]) -> list[list[str]]:
            return translator.translate_nbest(chunk, args.n_best, cfg)

    _write_outputs(args, lines, decoder)
    return 0


def _registered_decoder(args: argparse.Namespace, options: dict[str, Any]) -> Decoder | None:
    """A registered model's n-best outputs with `options`; None (and why, on stderr) if it cannot take them."""
    from s2s.registry import load_registered, unaccepted_options

    model = load_registered(args.model, args.tracking_uri, Path.cwd())
    if args.n_best > 1:
        options = {**options, "n_best": args.n_best}
    refused = unaccepted_options(model, options)
    if refused:
        print(f"s2s {args.command}: {args.model} was registered before models took "
              f"{', '.join('--' + k.replace('_', '-') for k in refused)}, which would be ignored; it decodes as "
              "registered. Drop the option(s), or use a local model folder.", file=sys.stderr)  # fmt: skip
        return None

    def decoder(chunk: list[str]) -> list[list[str]]:
        out = model.predict(chunk, params=options or None)
        return [[str(t) for t in hyps] for hyps in out] if args.n_best > 1 else [[str(t)] for t in out]

    return decoder


def _write_outputs(args: argparse.Namespace, lines: list[str], decoder: Decoder) -> None:
    """One line per output, or with --n-best: input number, rank, text per hypothesis."""
    from tqdm import tqdm

    def outputs(chunk: list[str], offset: int) -> list[str]:
        hypotheses = decoder(chunk)
        if args.n_best == 1:
            return [hyps[0] for hyps in hypotheses]
        return [f"{offset + i}\t{rank}\t{text}" for i, hyps in enumerate(hypotheses, 1) for rank, text in enumerate(hyps, 1)]

    step = args.batch_size * 4  # several decoder batches per call: sorting by length stays effective
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(args.output).open("w", encoding="utf-8")) if args.output else sys.stdout
        bar = stack.enter_context(tqdm(total=len(lines), unit="sent", disable=not args.input, file=sys.stderr))
        for start in range(0, len(lines), step):
            chunk = lines[start : start + step]
            out.writelines(t + "\n" for t in outputs(chunk, start))
            bar.update(len(chunk))


def _registry(args: argparse.Namespace) -> tuple[Any, str]:
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
    replaced = promote(client, name, args.version, args.reason)
    before = f"v{replaced.version}" if replaced is not None else "none"
    print(f"s2s: {name} champion is now v{args.version} (was {before}); `s2s rollback` undoes this")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """A registered version's data, tokenizer and model files back into this workspace, from the DVC remote."""
    import subprocess

    from s2s.registry import download_lineage

    workspace = Path(args.workspace).resolve()
    client, name = _registry(args)
    version = download_lineage(client, name, args.version, workspace)
    pull = subprocess.run(dvc.command("pull", "--force"), cwd=workspace, env=dvc.env())
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
    os.execve(sys.executable, command, dvc.env(MLFLOW_TRACKING_URI=store))  # its signals and exit code are the server's


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
    exported = export_version(client, name, ref, args.quantization, staging)
    state = "registered as" if exported.created else "was exported before:"
    alias = export_alias(args.quantization)
    aliased = get_alias(client, name, alias)
    served = f"@{alias}" if aliased is not None and str(aliased.version) == exported.version else f"/{exported.version}"
    named = f", alias {alias}" if served.startswith("@") else ""
    print(f"s2s: {args.model} ({args.quantization}) {state} {name} v{exported.version}{named}; "
          f"serve it with `s2s serve models:/{name}{served}`")  # fmt: skip
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from s2s.registry import rollback

    client, name = _registry(args)
    old, new = rollback(client, name)
    print(f"s2s: {name} champion rolled back from v{old} to v{new}")
    return 0


def add_to(sub: Any) -> None:
    """Add these commands to the `s2s` parser's subcommands."""
    _add_presets(sub)
    _add_generate(sub)
    _add_registry_commands(sub)
    _add_serve(sub)


def _add_presets(sub: Any) -> None:
    ps = sub.add_parser("presets", help="list the presets: tested recipes and datasets for `s2s run --preset NAME`")
    ps.set_defaults(func=_presets)


def _add_generate(sub: Any) -> None:
    from s2s.config import DecodingConfig

    local = DecodingConfig()  # what a model folder decodes with; a registered model decodes as it was registered
    tr = sub.add_parser("generate", aliases=["translate"], help="outputs for input texts (translations, summaries...) "
                        "from a registered model or a local checkpoint; `s2s translate` is the same command")  # fmt: skip
    tr.add_argument("text", nargs="*", help="input texts (or --input)")
    tr.add_argument("--model", default=MODEL_DIR, help="models:/NAME/VERSION, models:/NAME@ALIAS, or a model folder "
                    f"(default: {MODEL_DIR})")  # fmt: skip
    tr.add_argument("--tokenizer", default=TOKENIZER_DIR, help=f"tokenizer folder for a model folder (default: {TOKENIZER_DIR})")
    tr.add_argument(
        "--tracking-uri", help="MLflow registry URI for models:/ URIs (default: $MLFLOW_TRACKING_URI, else the local store)"
    )
    tr.add_argument("--input", help="file with one input per line (default: the text arguments); a document's line "
                    "breaks may stand there as the separator it was trained with (ingest fields.newline)")  # fmt: skip
    tr.add_argument("--output", help="write the outputs here (default: standard output)")
    registered = "default: as the registered model was evaluated; a model folder"
    tr.add_argument("--beam", type=int, help=f"beam size, 1 = greedy ({registered}: {local.beam_size})")
    tr.add_argument("--length-penalty", type=float, help=f"GNMT length-penalty alpha ({registered}: {local.length_penalty})")
    tr.add_argument("--max-len-a", type=float, help=f"output limit = a * source subwords + b ({registered}: {local.max_len_a})")
    tr.add_argument("--max-len-b", type=int, help=f"the b of that limit ({registered}: {local.max_len_b})")
    tr.add_argument("--min-len", type=int, help=f"subwords before EOS is allowed ({registered}: {local.min_len})")
    tr.add_argument("--no-repeat-ngram", type=int, help="no n-gram of this size twice in an output, 0 = off "
                    f"({registered}: {local.no_repeat_ngram})")  # fmt: skip
    tr.add_argument("--n-best", type=int, default=1, help="hypotheses per input, one line each: number, rank, text "
                    "(default: 1)")  # fmt: skip
    tr.add_argument("--batch-size", type=int, default=64, help="inputs decoded together (default: 64)")
    tr.set_defaults(func=_generate)


def _add_registry_commands(sub: Any) -> None:
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


def _add_serve(sub: Any) -> None:
    sv = sub.add_parser("serve", help="serve a registered model over HTTP (mlflow models serve, in this environment)")
    sv.add_argument("model", help="models:/NAME@ALIAS or models:/NAME/VERSION, or an alias or version of params.yaml's model")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model (default: 1)")
    sv.add_argument("--workspace", default=".", help="folder with params.yaml, for its registry settings (default: .)")
    sv.add_argument("--params", default=PARAMS_FILE, help=f"params file inside the workspace (default: {PARAMS_FILE})")
    sv.add_argument("--tracking-uri", help="MLflow registry URI (default: $MLFLOW_TRACKING_URI, else the workspace's store)")
    sv.set_defaults(func=_serve)
