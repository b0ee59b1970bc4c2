"""Entry point.

    python main.py with train_mode="main"                 # the demo, end to end
    python main.py with dataset=ntu60 split=2             # Setting 1 on prepared NTU-60 arrays
    python main.py with train_mode="sota" dataset=ntu60 split=5   # Setting 2 (Shift-GCN, SynSE split 55/5)
    python main.py print_config with dataset=ntu120 split=4
    python main.py embed with dataset=demo text_kind=labels text_model=minilm
    python main.py embed_all
    python main.py prepare_demo
    python main.py prepare with dataset=utd_mhad raw.path=/data/UTD-MHAD/Skeleton   # see README: Preparing datasets
    python main.py prepare_generic with raw.name=mydata raw.path=/data/mydata raw.layout=ntu25
    python main.py make_split with dataset=ntu60 new_split.seeds=[7] new_split.ids=[r7]
    python main.py server_start | server_status | server_stop   # the embedded run database
    python main.py install_tracking                       # install it and Omniboard (once; runs do it on demand)
    python main.py omniboard                              # browse the runs (http://127.0.0.1:9000/)
    python main.py sync                                   # upload runs recorded offline or during an outage
    python main.py with nw_ucla train_mode="supervised" backbone="ctrgcn" modality="bone"   # supervised track
    python main.py ensemble with dataset=ntu60 ensemble_members=[3,4,5,6]   # fuse recorded runs' saved scores
"""
from __future__ import annotations

import logging
import os
import sys

import experiments.tracking.commands  # noqa: F401  (registers the run database's side commands)
from config import ablation_settings, ex, sweep_options, sweep_settings
from experiments.experiment import use_short_errors
from experiments.tracking.output import interrupt_on_sigterm

# Heavy modules (torch, the text models, the database client) are imported inside the commands
# that use them, so `--help` and `print_config` answer in a few seconds.

# One loop for every training track; tracks differ by config (config.py: TRACK_DEFAULTS).
TRACK_RUNNERS = {"main": "tracks:run_zero_shot", "sota": "tracks:run_zero_shot", "one_shot": "tracks:run_zero_shot",
                 "test": "tracks:run_test", "supervised": "supervised:run_supervised",
                 "linear_eval": "supervised:run_supervised", "pretrain": "pretrain:run_pretrain",
                 "ensemble": "experiments.suite.ensemble:run_ensemble"}
# Commands that train or evaluate models: they run under the project's allocator (experiments/runtime.py).
HEAVY_COMMANDS = {"run"}


@ex.main
def run(_config, _run):
    """Train and evaluate the configured track; the result dict is the run's result."""
    from experiments.tracking.observer import run_config
    from experiments.tracking.output import finishing, plain, redact
    import importlib

    from experiments.tracking.tracker import SacredTracker

    from experiments.train import distributed

    tracker = SacredTracker(_run)
    module, name = TRACK_RUNNERS[_config["train_mode"]].split(":")
    runner = getattr(importlib.import_module(module if "." in module else f"experiments.train.{module}"), name)
    world = distributed.setup(_config)  # a torchrun launch: join its process group (a plain run: one process)
    try:
        result = runner(run_config(redact(plain(_config))), tracker)  # the checkpoint stores this config
    except BaseException as exc:  # in a launch a RuntimeError is e.g. another process that died
        finishing()  # a second Ctrl-C, or torchrun's SIGTERM, must not cut the recording of this end short
        folder = _run.info.get("run_folder")
        resumable = isinstance(exc, KeyboardInterrupt) or world.active and isinstance(exc, RuntimeError)
        if folder and world.main and resumable:
            print(f"\n{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'stopped'}; continue this run with:\n"
                  f"  {resume_command(_run, folder, world.size)}", file=sys.stderr, flush=True)
        raise
    if not world.main:  # only rank 0 records and reports the run
        return None
    if world.active:
        result["processes"] = world.size  # a torchrun launch of this many processes
    tracker.summarize(result)
    print(end_summary(_config, _run, result), flush=True)
    return result


def _arg(key: str, value) -> str:
    """``key=value`` as Sacred parses it, quoted for a POSIX shell where needed."""
    import re
    import shlex

    text = value if isinstance(value, str) and re.fullmatch(r"[\w./:-]+", value) else repr(value)
    return shlex.quote(f"{key}={text}")


def resume_command(_run, folder: str, processes: int = 1) -> str:
    """The command that continues an interrupted run: its own settings plus ``resume=<folder>`` (a
    torchrun launch of ``processes`` processes is continued by one of as many)."""
    updates = {k: v for k, v in (_run.meta_info.get("config_updates") or {}).items() if k not in ("resume", "out_dir")}
    named = list(_run.meta_info.get("named_configs") or [])
    launcher = ["torchrun", f"--nproc_per_node={processes}"] if processes > 1 else ["python"]
    words = [*launcher, "main.py", "with", *named, *(_arg(k, v) for k, v in updates.items()), _arg("resume", folder)]
    return " ".join(words)


def end_summary(cfg: dict, _run, result: dict) -> str:
    """What a user needs after a run: where its files are, how to browse it, what keeps running."""
    from pathlib import Path

    from experiments.tracking import dbserver
    from experiments.tracking.database import MONGO_URL_ENV
    from experiments.tracking.output import redact_text

    folder = Path(result.get("checkpoint") or result.get("scores", "")).parent
    if "summary" in result:
        headline = result["summary"]
    elif "ensemble_top1" in result:
        headline = f"ensemble top-1 {result['ensemble_top1']:.2f}%, top-5 {result['ensemble_top5']:.2f}% ({result['weight_rule']})"
    elif "test_top1" in result:
        headline = f"test top-1 {result['test_top1']:.2f}%, top-5 {result['test_top5']:.2f}% ({result['modality']} stream)"
    else:
        headline = f"unseen top-1 {result['unseen_top1']:.2f}% inductive" + (
            f", {result['unseen_top1_aligned']:.2f}% aligned" if result.get("unseen_top1_aligned") is not None else "")
    lines = ["", f"run {_run._id} finished: {headline}",
             f"  files:   {folder}/ ({', '.join(sorted(p.name for p in folder.glob('*') if p.is_file()))})"]
    url = cfg["mongo_url"] or os.environ.get(MONGO_URL_ENV, "")
    if cfg["offline"]:
        lines.append("  record:  offline (upload it with: python main.py sync)")
    elif url:
        lines.append(f"  record:  {redact_text(url)}; browse: python main.py omniboard")
    else:
        info = dbserver.read_server_state()
        if info is not None:
            lines.append(f"  record:  the embedded run database, {info.url} (pid {info.pid}, data {info.storage}); it "
                         "keeps running for browsing")
            lines.append("  browse:  make omniboard  (or python main.py omniboard; http://127.0.0.1:9000/)")
            lines.append("  stop it: make server-stop  (or python main.py server_stop)")
    return "\n".join(lines)


@ex.command(unobserved=True)
def embed(dataset, text_kind, text_model, data_root):
    """(Re)build the text embeddings of one dataset / text kind / model."""
    from data.catalog import get_dataset
    from text import embeddings as text_embeddings

    path = text_embeddings.build(data_root, dataset, text_kind, text_model,
                                 get_dataset(dataset, data_root).num_classes)
    print(f"wrote {path}")
    return str(path)


@ex.command(unobserved=True)
def embed_all(data_root):
    """(Re)build the embeddings of every dataset with class texts, every text kind, every model."""
    from data.catalog import get_dataset
    from descriptions import available_datasets, text_kinds
    from text import embeddings as text_embeddings
    from text.models import MODELS

    written = []
    for ds in available_datasets(data_root):
        for kind in text_kinds(ds, data_root):
            for model in MODELS:
                written.append(str(text_embeddings.build(data_root, ds, kind, model,
                                                         get_dataset(ds, data_root).num_classes)))
                print(f"wrote {written[-1]}")
    return written


@ex.command(unobserved=True)
def prepare(dataset, data_root, raw):
    """Raw files of ``dataset`` → prepared samples → every zero-shot split folder (docs/datasets.md)."""
    from data import prepare as prepare_data
    from experiments.tracking.output import plain

    return prepare_data.prepare_dataset(dataset, data_root, plain(raw))


@ex.command(unobserved=True)
def prepare_generic(data_root, raw, new_split):
    """Register a dataset in the generic format (raw.name, raw.path, raw.layout, ...), draw its splits
    (new_split.*) and prepare it."""
    from data import generic
    from data import prepare as prepare_data
    from data.split_builder import register_splits
    from experiments.tracking.output import plain

    root = generic.register(data_root, raw["name"], raw["path"], raw["layout"], persons=raw["persons"],
                            origin_joint=raw["origin_joint"], train_subjects=list(raw["train_subjects"]))
    print(f"registered {raw['name']} in {root}")
    splits = make_split_specs(raw["name"], data_root, plain(new_split))
    register_splits(data_root, raw["name"], splits)
    summary = prepare_data.prepare_dataset(raw["name"], data_root, {**plain(raw), "splits": list(splits)})
    summary["layout_warnings"] = prepare_data.check_layout(raw["name"], data_root)
    for warning in summary["layout_warnings"]:
        print(f"warning: {warning}")
    return summary


@ex.command(unobserved=True)
def make_split(dataset, data_root, raw, new_split):
    """Register new zero-shot splits of ``dataset`` (seeded draws or explicit lists; new_split.*) and write
    them from its prepared samples."""
    from data import prepare as prepare_data
    from data.split_builder import register_splits
    from experiments.tracking.output import plain

    splits = make_split_specs(dataset, data_root, plain(new_split))
    path = register_splits(data_root, dataset, splits)
    print(f"registered splits {list(splits)} in {path}")
    samples = prepare_data.existing_samples(data_root, dataset)
    protocol = raw["protocol"] or samples.protocols[0]
    return [str(p) for p in prepare_data.write_splits(samples, data_root, dataset, list(splits), protocol)]


def make_split_specs(dataset: str, data_root: str, opts: dict) -> dict:
    from data.catalog import get_dataset
    from data.split_builder import build_splits

    return build_splits(get_dataset(dataset, data_root).num_classes, unseen=opts["unseen"], val=opts["val"],
                        num_unseen=opts["num_unseen"], num_val=opts["num_val"],
                        seeds=[] if opts["unseen"] else opts["seeds"], ids=opts["ids"])


@ex.command(unobserved=True)
def prepare_demo(data_root):
    """Generate the built-in demo dataset into <data_root>/zeroshot/demo (every demo split)."""
    from data import demo

    for d in demo.prepare(data_root):
        print(f"wrote {d}")


@ex.command(unobserved=True)
def sweep(data_root, mongo_url):
    """Run a grid (sweep.datasets × splits × seeds × variants), one recorded run per point, skipping
    points already COMPLETED in the database; stop it any time and start it again. sweep.workers
    points at once; sweeps on other machines recording into the same database share the grid."""
    from experiments.suite.grid import grid as sweep_grid
    from experiments.suite.grid import summarize_points, with_run_defaults
    from experiments.suite.sweep import run_sweep
    from experiments.tracking.database import connect, resolve_target

    s = sweep_settings()
    base = {"data_root": data_root, **s["base"]}  # the runs read the sweep's data
    points = with_run_defaults(sweep_grid(s["datasets"], s["splits"], s["seeds"], s["variants"], base, data_root),
                               ex.resolved_config)
    print(f"sweep: {summarize_points(points)}")
    db = connect(resolve_target(mongo_url))
    return run_sweep(points, db, mongo_url=mongo_url, **sweep_options(s))


@ex.command(unobserved=True)
def ablation(data_root, mongo_url):
    """Component on/off rows (ablation.components, ablation.combos) against a baseline, over the sweep's
    datasets x splits x seeds: runs the sweep (skipping COMPLETED points), then prints the ablation table
    pooled over splits and seeds (experiments/suite/ablation.py)."""
    from pathlib import Path

    from experiments.files import write_text_atomic
    from experiments.suite.ablation import run_ablation, to_markdown
    from experiments.tracking.database import connect, resolve_target

    s, opts = sweep_settings(), ablation_settings()
    rows = run_ablation(connect(resolve_target(mongo_url)), s, opts, data_root, sweep_options(s),
                        mongo_url=mongo_url, resolve=ex.resolved_config)
    if not rows:
        print("no COMPLETED runs of these variants yet")
        return {}
    table = to_markdown(rows)
    print(table)
    if opts["out"]:
        write_text_atomic(Path(opts["out"]), table)
        print(f"wrote {opts['out']}")
    return {"variants": list(dict.fromkeys(r.variant for r in rows)), "rows": len(rows)}


@ex.command(unobserved=True)
def refine_texts(data_root, mongo_url, refine, _run, _config):
    """A run's validation confusion -> an LLM's movement cues -> a new text kind, embedded (refine.run,
    refine.base_url, refine.model); refine.rounds=k: the agent loop, each round a recorded run."""
    from experiments.suite.refine import RefineSettings, agent_loop
    from experiments.suite.refine import refine as refine_once
    from experiments.tracking.observer import run_config
    from experiments.tracking.output import plain

    r, defaults = RefineSettings.from_config(plain(refine)), run_config(plain(_config))
    if r.rounds > 0:
        updates = run_config(plain(_run.meta_info.get("config_updates") or {}))  # the rounds' training settings
        return agent_loop(r, {k: v for k, v in updates.items() if k not in ("data_root", "mongo_url")}, data_root,
                          mongo_url, defaults)
    if not r.run:
        raise ValueError("refine.run is empty: give the run to question (a run id, run folder or best.pt), or "
                         "refine.rounds=1 to train one first")
    done = refine_once(r, data_root, mongo_url, r.run, defaults)
    print(f"wrote text kind {done['kind']!r} ({done['cues']} cues for classes {done['refined_classes']}) to "
          f"{done['texts']}; train with: python main.py with dataset={done['dataset']} text_kind={done['kind']}")
    return done


@ex.command(unobserved=True)
def llm_server():
    """Serve the local LLM (Gemma 3 270M via llama-cpp-python, installed on first use into .tools/llm) on
    http://127.0.0.1:$PGFA_LLM_PORT/v1 (8080) for refine_texts, until Ctrl-C. $PGFA_LLM_THREADS: its threads
    (default: every core; 1 on a machine busy with other work, where llama.cpp's threads wait on each other)."""
    from pathlib import Path

    from text import llmserver

    threads = os.environ.get("PGFA_LLM_THREADS", "")
    if threads and (not threads.isdigit() or int(threads) < 1):
        raise SystemExit(f"PGFA_LLM_THREADS={threads!r}: give a number of threads (1 or more)")
    server = llmserver.start(int(os.environ.get("PGFA_LLM_PORT") or 8080), Path(llmserver.venv(), "server.log"),
                             threads=int(threads) if threads else None)
    print(f"local LLM: refine.base_url={server.base_url} refine.model={server.model} "
          f"refine.schema_format=json_object  (log {server.log}; Ctrl-C stops it)", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@ex.command(unobserved=True)
def results(mongo_url, report):
    """The results table from the recorded runs: Markdown (printed), CSV and a bar chart in report.out."""
    from experiments.suite.report import aggregate, fetch_runs, write_report
    from experiments.tracking.database import connect, resolve_target

    db = connect(resolve_target(mongo_url))
    rows = aggregate(fetch_runs(db, list(report["datasets"]), list(report["tags"])))
    if not rows:
        print("no COMPLETED runs with results match")
        return {}
    paths = write_report(rows, report["out"])
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {k: str(v) for k, v in paths.items()}


def ensemble_alias(argv: list[str]) -> list[str]:
    """``python main.py ensemble [with ...]`` is the training command with ``train_mode="ensemble"``
    (recorded like every run)."""
    if len(argv) > 1 and argv[1] == "ensemble":
        rest = argv[2:]
        if rest[:1] == ["with"]:
            rest = rest[1:]
        return [argv[0], "with", "train_mode=ensemble", *rest]
    return argv


def command_of(argv: list[str]) -> str:
    """The Sacred command a command line runs (``run``, the training one, when it names none)."""
    for arg in argv[1:]:
        if arg == "with" or "=" in arg:
            break
        if not arg.startswith("-"):
            return arg
    return ex.default_command


def cli() -> None:
    """The command line: ``python main.py ...``, or ``pgfa ...`` after ``pip install .``."""
    logging.getLogger("pgfa").setLevel(logging.INFO)
    sys.argv = ensemble_alias(sys.argv)
    if command_of(sys.argv) in HEAVY_COMMANDS:  # the observed command: recorded, under the allocator
        from experiments.runtime import ensure_allocator_settings
        from experiments.tracking.observer import attach_observers
        from experiments.train.distributed import world

        ensure_allocator_settings()  # re-executes this command once under the chosen allocator
        if world().main:  # a torchrun launch is recorded by rank 0 alone
            attach_observers(ex)
        else:
            logging.getLogger("pgfa").setLevel(logging.ERROR)  # rank 0 speaks for the launch
    interrupt_on_sigterm()
    use_short_errors()
    try:
        ex.run_commandline()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run said how to resume it; no traceback
        sys.exit(130)


if __name__ == "__main__":
    cli()
