"""Data-parallel training (s2s.distributed, s2s.train): N processes under torchrun make the update of one.

CPU, gloo, real `torchrun` launchers; dropout 0 so that the runs can be compared parameter by parameter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from support import REPO, TINY_PARAMS, deep_merge, free_port, make_workspace

from s2s import checkpoint, distributed, encoded, ingest, layout, tokenizer
from s2s.checkpoint import resume_key
from s2s.config import ConfigError, DistributedConfig, parse_params
from s2s.tokenizer import Tokenizers
from s2s.train import Trainer, split_batch
from s2s.train_records import TrainSummary
from s2s.translate import Translator

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# ~90 global batches an epoch, so that 20 updates stay inside epoch 1; one thread per process on 2 cores.
PARAMS = deep_merge(TINY_PARAMS, {"train": {"batch_tokens": 400, "threads": 1, "checkpoint_every": 5}})
WORKER = REPO / "tests" / "distributed_worker.py"
SENTENCES = ["We saw a big dog yesterday.", "They sold the old book."]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    params = parse_params(PARAMS)
    ingest.run(params.ingest, root, root / "data", root / "ingest.json")
    pairs = layout.read_prepared(root / "data", "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], root / "tok")
    encoded.encode(Tokenizers.load(root / "tok"), root / "data", root / "encoded")
    write_params(root / "params.yaml", PARAMS)
    return root


def write_params(path: Path, params: dict) -> None:
    path.write_text(yaml.safe_dump(parse_params(params).model_dump(mode="json")))


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def worker(root: Path, mode: str, out: str, params: str = "params.yaml") -> list[str]:
    return [str(WORKER), mode, "--params", str(root / params), "--data", str(root / "data"), "--tokenizer",
            str(root / "tok"), "--out", str(root / out)]  # fmt: skip


def torchrun(cfg: DistributedConfig) -> list[str]:
    """The launcher command s2s itself builds for `cfg`."""
    return [sys.executable, "-m", "torch.distributed.run", *distributed.torchrun_args(cfg)]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def one_process(root: Path) -> Path:
    """The weights after the worker's steps on one process (run once per module, by whichever test needs it first)."""
    out = root / "one/rank0.pt"
    if not out.is_file():
        subprocess.run([sys.executable, *worker(root, "steps", "one")], check=True, capture_output=True, env=env(), timeout=600)
    return out


def test_two_processes_make_the_update_of_one_on_the_same_global_batches(prepared: Path) -> None:
    root = prepared
    one_process(root)
    launched = subprocess.run([*torchrun(DistributedConfig(nproc_per_node=2)), *worker(root, "steps", "two")],
                              capture_output=True, text=True, env=env(), timeout=600)  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr

    one, rank0, rank1 = state(one_process(root)), state(root / "two/rank0.pt"), state(root / "two/rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the ranks never drift apart
    assert max_difference(rank0, one) < 1e-4  # and they trained what one process trains
    params = parse_params(PARAMS)
    initial = Trainer(params.train, params.model, params.evaluate, root / "data", root / "tok").model.state_dict()
    assert max_difference(one, initial) > 1e-2  # 20 updates moved the weights: the comparison above means something

    # Gradient accumulation: one process, the global batch in three micro-batches, the same update again.
    write_params(root / "accumulate.yaml", deep_merge(PARAMS, {"train": {"accumulate": 3}}))
    subprocess.run([sys.executable, *worker(root, "steps", "acc", "accumulate.yaml")], check=True, env=env(), timeout=600)
    # Looser than the two processes' bound: micro-batches pad to other lengths, so the float sums run in another
    # order, and 20 Adam steps enlarge that rounding (1.2e-4 on an Intel Xeon, under 1e-4 on AMD EPYC), still a
    # twentieth of the 1e-2 the updates must move the weights (asserted above).
    assert max_difference(state(root / "acc/rank0.pt"), one) < 5e-4


def test_two_processes_reading_the_encoded_files_make_the_update_of_one(prepared: Path) -> None:
    """Each rank maps the same encode-stage files and takes its shard of every global batch (planned from the
    lengths alone): the update of one process that tokenized the corpus in memory."""
    root = prepared
    command = [*torchrun(DistributedConfig(nproc_per_node=2)), *worker(root, "steps", "two-encoded"),
               "--encoded", str(root / "encoded")]  # fmt: skip
    launched = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=600)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    one, rank0, rank1 = state(one_process(root)), state(root / "two-encoded/rank0.pt"), state(root / "two-encoded/rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert max_difference(rank0, one) < 1e-4


def test_two_machines_meet_at_the_rendezvous_endpoint(prepared: Path) -> None:
    """Two launchers, one process each, as two nodes on loopback: the static rendezvous s2s configures."""
    root = prepared
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [DistributedConfig(nnodes=2, node_rank=r, rdzv_endpoint=endpoint) for r in (0, 1)]
    procs = [subprocess.Popen([*torchrun(n), *worker(root, "steps", f"node{n.node_rank}")], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in nodes]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(p.name for p in (root / "node0").iterdir()) == ["rank0.pt"]  # node 0 runs global rank 0
    assert sorted(p.name for p in (root / "node1").iterdir()) == ["rank1.pt"]
    node0, node1 = state(root / "node0/rank0.pt"), state(root / "node1/rank1.pt")
    assert all(torch.equal(node0[k], node1[k]) for k in node0)
    assert max_difference(node0, state(one_process(root))) < 1e-4  # the update one process makes, as on one machine


def test_only_rank_zero_writes_and_its_model_translates(prepared: Path) -> None:
    root = prepared
    launched = subprocess.run([*torchrun(DistributedConfig(nproc_per_node=2)), *worker(root, "fit", "fit")],
                              capture_output=True, text=True, env=env(), timeout=600)  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert sorted(p.name for p in (root / "fit").iterdir()) == ["rank0"]  # rank 1 wrote nothing at all
    written = sorted(str(p.relative_to(root / "fit/rank0")) for p in (root / "fit/rank0").rglob("*") if p.is_file())
    assert written == ["curve.csv", "model/model.pt", "train.json"]  # resume states removed once finished
    summary = TrainSummary.read(root / "fit/rank0/train.json")
    assert summary.processes == 2 and summary.epochs == 2 and summary.resumed_at_update == 0
    assert summary.tokens_per_second_per_process == pytest.approx(summary.tokens_per_second / 2, abs=0.1)
    model, _, _ = checkpoint.load_model(root / "fit/rank0/model/model.pt")
    translations = Translator(model, tokenizer.Tokenizers.load(root / "tok"), torch.device("cpu")).translate(SENTENCES)
    assert len(translations) == 2 and all(translations)
    # The model file holds the weights the run kept: its recorded validation score is the summary's.
    kept = torch.load(root / "fit/rank0/model/model.pt", weights_only=True)
    assert (kept["valid_score"], summary.kept) == (summary.best_valid_score, f"epoch {kept['epoch']}")


def test_split_batch_gives_each_rank_a_disjoint_interleaved_shard() -> None:
    index = list(range(10, 17))  # 7 sentences, 20 target tokens in all
    parts = [split_batch(index, 20, distributed.World(rank=r, world_size=2), 2) for r in (0, 1)]
    assert parts[0] == [([10, 14], 0.1), ([12, 16], 0.1)]
    assert parts[1] == [([11, 15], 0.1), ([13], 0.1)]
    shards = sorted(i for rank in parts for part, _ in rank for i in part)
    assert shards == index  # disjoint, and together the whole global batch
    # Fewer sentences than processes x micro-batches: an empty part trains a stand-in at weight 0.
    assert split_batch([5, 6], 9, distributed.World(rank=1, world_size=2), 2) == [([6], 2 / 9), ([5], 0.0)]
    assert split_batch([5, 6, 7], 9, distributed.World(), 1) == [([5, 6, 7], 1 / 9)]  # one process: the batch as is


def test_torchrun_options_and_config_errors() -> None:
    assert distributed.torchrun_args(DistributedConfig(nproc_per_node=4)) == ["--nproc-per-node=4", "--standalone"]
    two = DistributedConfig(nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="node0.example:29500")
    assert distributed.torchrun_args(two) == ["--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--rdzv-backend=static",
                                              "--rdzv-endpoint=node0.example:29500"]  # fmt: skip
    assert distributed.nproc_per_node(DistributedConfig(nproc_per_node="auto")) == max(torch.cuda.device_count(), 1)
    assert not distributed.needs_launch(DistributedConfig())
    for bad, message in (
        ({"nnodes": 2}, r"train.distributed: Value error, nnodes > 1 needs rdzv_endpoint"),
        ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}, r"node_rank \(2\) must be below nnodes \(2\)"),
        ({"nnodes": 2, "rdzv_endpoint": "node0"}, r"rdzv_endpoint must be host:port \(got 'node0'\)"),
        ({"nproc_per_node": 0}, r"train.distributed.nproc_per_node.*must be at least 1, or auto"),
        ({"nproc": 2}, r"train.distributed.nproc: unknown key \(allowed: nnodes, node_rank, nproc_per_node, rdzv_endpoint\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_params({"train": {"distributed": bad}})


def test_a_resume_state_belongs_to_the_run_not_to_its_process_layout(prepared: Path) -> None:
    one = parse_params(PARAMS)
    two = parse_params(deep_merge(PARAMS, {"train": {"distributed": {"nproc_per_node": 2}}}))
    other = parse_params(deep_merge(PARAMS, {"train": {"lr": 0.001}}))
    keys = [resume_key(p.train, p.model, p.evaluate, prepared / "data", prepared / "tok") for p in (one, two, other)]
    assert keys[0] == keys[1] != keys[2]


def launcher_of(process: psutil.Process) -> psutil.Process | None:
    for child in process.children(recursive=True):
        try:
            if "torch.distributed.run" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_killed_launcher_resumes_on_two_processes_and_registers_one_run(tmp_path: Path, prefect_home: None) -> None:
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    params = deep_merge(PARAMS, {"train": {"distributed": {"nproc_per_node": 2}, "epochs": 3}})
    ws = make_workspace(tmp_path / "ws", params)
    resume_dir = ws / layout.RESUME_DIR
    killed: dict[str, object] = {}

    def kill_after_first_resume_state() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if resume_dir.is_dir() and any(not p.name.endswith("-best.pt") for p in resume_dir.glob("*.pt")):
                launcher = launcher_of(psutil.Process())
                if launcher is not None:
                    time.sleep(0.3)  # a few steps past that state
                    killed["workers"] = launcher.children()
                    launcher.send_signal(signal.SIGKILL)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_first_resume_state)
    killer.start()
    first = pipeline(workspace=str(ws), return_state=True)
    killer.join()
    assert first.is_failed() and len(killed.get("workers", [])) == 2
    _, alive = psutil.wait_procs(killed["workers"], timeout=15)  # type: ignore[arg-type]
    assert alive == []  # the workers died with their launcher: nothing trains on in the background
    [saved] = [p for p in resume_dir.glob("*.pt") if not p.name.endswith("-best.pt")]
    updates_saved = torch.load(saved, weights_only=True)["progress"]["updates"]
    assert updates_saved > 0 and not (ws / layout.TRAIN_SUMMARY).exists()

    second = pipeline(workspace=str(ws))
    assert second.stages_ran["train"] and second.registered.version == "1"
    summary = TrainSummary.read(ws / layout.TRAIN_SUMMARY)
    assert summary.resumed_at_update == updates_saved  # the step counter went on from the state
    assert summary.processes == 2 and summary.epochs == 3 and summary.updates > updates_saved
    assert list(resume_dir.iterdir()) == []

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1  # the killed attempt logged nothing; the resumed one logged once
    # The registered model of a 2-process run loads from its URI and translates as the checkpoint does.
    script = (
        "import json, mlflow.pyfunc\n"
        f"mlflow.set_registry_uri({uri!r})\n"
        "print(json.dumps(list(mlflow.pyfunc.load_model('models:/s2s-builtin-en-de/1').predict(" + repr(SENTENCES) + "))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=300)
    registered = json.loads(out.stdout.strip().splitlines()[-1])
    model, _, _ = checkpoint.load_model(ws / layout.MODEL_DIR / layout.MODEL_FILE)
    local = Translator(model, tokenizer.Tokenizers.load(ws / layout.TOKENIZER_DIR), torch.device("cpu")).translate(SENTENCES)
    assert registered == local and all(registered)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_two_gpus_make_the_update_of_one(prepared: Path) -> None:
    root = prepared
    write_params(root / "cuda.yaml", deep_merge(PARAMS, {"train": {"device": "cuda"}}))
    subprocess.run([sys.executable, *worker(root, "steps", "cuda1", "cuda.yaml")], check=True, env=env(), timeout=600)
    subprocess.run([*torchrun(DistributedConfig(nproc_per_node=2)), *worker(root, "steps", "cuda2", "cuda.yaml")],
                   check=True, env=env(), timeout=600)  # fmt: skip
    rank0, rank1 = state(root / "cuda2/rank0.pt"), state(root / "cuda2/rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert max_difference(rank0, state(root / "cuda1/rank0.pt")) < 1e-3
