"""The `winnow` command: run, demo, search, audit, corpus, evaluate, serve, config.

Errors in what the user gave (config, input, arguments) print one line and exit with code 2;
a pipeline failure prints its cause and exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import io
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pipeline import STAGE_NAMES
from pipeline.summary import format_dry_run, format_summary

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.output.index import Hit

LOG = logging.getLogger("winnow")
#: Exit status of a run that finished but raised an alarm (its crawl failed too often to trust).
EXIT_ALARM = 3
_HANDLER = "winnow-cli"
_USER_ERROR = re.compile(r"(InputError|ConfigError|EmbedError): ([^\n]+)")


class UsageError(Exception):
    """A bad command line."""


def _quiet_import_noise(record: logging.LogRecord) -> bool:
    """Drops Beam's import-time notice about optional Google Cloud clients."""
    return not record.getMessage().startswith("apitools not found")


#: Winnow's packages: their loggers (`__name__`) and `winnow` are Winnow's own; every other
#: logger belongs to a library (urllib3, Beam, gRPC, ...).
_OWN_PACKAGES = ("winnow", "pipeline", "transforms", "schemas", "sampleweb", "deploy")
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where a local worker process logged a record, as Beam's runner logs it again (`Worker: ...`).
_WORKER_LOCATION = re.compile(r'log_location: "([^"]*)"')


def _from_winnow(record: logging.LogRecord) -> bool:
    """Whether `record` was logged by Winnow's code: by one of its loggers, or (a record of a
    local worker process, which Beam's runner logs again under its own name) in one of its files.
    The filter of an ordinary run's terminal: libraries' records (urllib3's "Failed to parse
    headers" and its stack, Beam's worker notices, Python warnings) show only with `-v`."""
    if record.name.split(".", 1)[0] in _OWN_PACKAGES:
        return True
    if record.name != "root" and not record.name.startswith("apache_beam."):
        return False
    found = _WORKER_LOCATION.search(record.getMessage())
    return found is not None and any(
        found.group(1).startswith(os.path.join(_PROJECT, package) + os.sep) for package in _OWN_PACKAGES
    )


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()  # the summary reports the time the user waited, not the pipeline's alone
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    args.started = started
    _log_to_stderr(logging.INFO if args.verbose else logging.WARNING)
    if args.command not in ("run", "search", "audit") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from pipeline.config import ConfigError
    from pipeline.output.errors import AuditError, SearchError
    from transforms.common.errors import InputError
    from transforms.embed.config import EmbedError

    try:
        with _ctrl_c_stops():
            return int(args.handler(args, extra) or 0)
    except (ConfigError, InputError, EmbedError, SearchError, AuditError, UsageError) as err:
        print(f"winnow: error: {plain_message(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(exit_now=argv is None)
    except Exception as err:  # a failed pipeline: show its cause, not a Beam stack trace
        if _INTERRUPTED.is_set():  # Beam raises a step's KeyboardInterrupt again as a RuntimeError
            return _interrupted(exit_now=argv is None)
        found = _USER_ERROR.search(str(err))
        if found:
            print(f"winnow: error: {plain_message(found.group(2))}", file=sys.stderr)
            return 2
        LOG.info("%s failed", args.command, exc_info=err)  # shown with -v
        what = "pipeline" if args.command in ("run", "demo") else args.command
        print(f"winnow: {what} failed: {failure_cause(err)} (rerun with -v for details)", file=sys.stderr)
        return 1


#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports a process that SIGINT ended).
EXIT_INTERRUPTED = 130
#: Set by Ctrl-C during a command (`_ctrl_c_stops`).
_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _ctrl_c_stops() -> Iterator[None]:
    """Ctrl-C (SIGINT) during a command run in the main thread. The first stops the local worker
    processes (Beam's runner would wait for each to finish its bundle), keeps what threads and
    libraries say as they die off the terminal (`-v` shows it), and raises KeyboardInterrupt: the
    command unwinds through its cleanup (the output's lock, temporary files, a sample-web server),
    and the output stays as a killed run leaves it, for a rerun to complete. A second Ctrl-C ends
    the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _INTERRUPTED.clear()
    previous, hook = signal.getsignal(signal.SIGINT), threading.excepthook

    def on_interrupt(signum: int, frame: object) -> None:
        if _INTERRUPTED.is_set():
            _interrupted(exit_now=True)
        _INTERRUPTED.set()
        threading.excepthook = _quiet_thread_end
        from pipeline.runner import stop_local_workers

        stop_local_workers()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        threading.excepthook = hook


def _quiet_thread_end(args: threading.ExceptHookArgs) -> None:
    """After Ctrl-C: a thread ended by the interruption (a worker's relay, a fetch) is logged, not printed."""
    LOG.info("thread %s ended: %s", getattr(args.thread, "name", "?"), args.exc_value)


def _not_interrupted(record: logging.LogRecord) -> bool:
    """Drops what is logged after Ctrl-C (the stacks of steps and fetches cut short)."""
    return not _INTERRUPTED.is_set()


def _interrupted(exit_now: bool) -> int:
    """Says "interrupted" on one line. `exit_now` (the `winnow` command itself, not a call of `main`
    from Python) ends the process here: threads still waiting on the network (the crawl's fetches)
    would hold the interpreter's exit for their timeouts, and the local workers are gone already."""
    print("winnow: interrupted", file=sys.stderr)
    if exit_now:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


#: An exception class naming a message (`pyarrow.lib.ArrowInvalid: …`) or quoted in one
#: (`S3ClientError('Access Denied', 403)`): internal names that tell the user nothing.
_CLASS = r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Invalid|Failure|Timeout)\w*"
_CLASS_PREFIX = re.compile(rf"^{_CLASS}: ")
_CLASS_REPR = re.compile(rf"\b{_CLASS}\((['\"])(.*?)\1(?:, (\d+))?\)")


#: The arguments of such an exception printed as a tuple: `('Access Denied', 403)`.
_ARGS_REPR = re.compile(r"\('([^'\\]*)', (\d+)\)")


#: What Beam appends to an error raised inside a step: the step's name, which tells the user nothing.
_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


def plain_message(text: str) -> str:
    """`text` without Python exception class names or Beam's step suffix: each one's message stays."""
    text = _STEP_SUFFIX.sub("", text.strip())
    while found := _CLASS_PREFIX.match(text):
        text = text[found.end() :]
    text = _CLASS_REPR.sub(lambda m: m.group(2) + (f" (status {m.group(3)})" if m.group(3) else ""), text)
    return _ARGS_REPR.sub(r"\1 (status \2)", text)


def failure_cause(err: BaseException) -> str:
    """The last line of an unexpected error's message in words (its class name, split, if it has none)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    cause = plain_message(lines[-1]) if lines else ""
    if not cause or cause == repr(err.args[0] if err.args else ""):
        words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", type(err).__name__).lower()
        cause = f"{words} {cause}".strip()
    return cause[:500]


def _log_to_stderr(level: int) -> None:
    """Logs to the stderr of this call: the handler an earlier `main` in the same process added
    (to the stderr of then, perhaps closed since) is replaced, never stacked."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(_quiet_import_noise)
    if level > logging.INFO:
        handler.addFilter(_from_winnow)
        handler.addFilter(_not_interrupted)
    logging.captureWarnings(True)  # Python warnings (Pillow's, Beam's) as records of `py.warnings`
    root.addHandler(handler)
    root.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    # -v is also taken after the subcommand (`winnow run ... -v`); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", parents=[verbose], help="run the pipeline on URL lists (other --flags go to Beam)"
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", action="append", help="file, folder or glob (repeatable)")
    source.add_argument(
        "--retry-failed",
        metavar="PREVIOUS_OUTPUT",
        help="take a previous run's output as the input and fetch again only its transient crawl "
        "failures (timeouts, DNS, 5xx, 429); write to a new --output",
    )
    run.add_argument("--output", required=True, help="output folder (local, s3://, gs://)")
    _add_config_args(run)
    run.add_argument("--runner", default="local", help="local (default), DataflowRunner, SparkRunner, …")
    run.add_argument("--workers", type=int, help="local runner: worker processes (0 = one per core)")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the job is submitted; the job itself writes the index and the report and "
        "completes the output (no Beam counters in stats.json)",
    )
    run.set_defaults(handler=_cmd_run)

    demo = sub.add_parser(
        "demo", parents=[verbose], help="generate and serve the sample web, then run the full pipeline on it"
    )
    demo.add_argument(
        "--workdir",
        default="build/demo",
        help="folder of the sample web (web/) and the run's output (shards/) (default build/demo)",
    )
    demo.add_argument(
        "--samples", type=int, default=2000, help="image/caption pairs generated (default 2000)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated sample web (default 0)")
    demo.add_argument("--workers", type=int, help="local worker processes (0 = one per core)")
    demo.add_argument(
        "--port",
        type=int,
        default=0,
        help="serve the sample web on this loopback port (0 = any free one); the URLs, and so the "
        "uids and shards, depend on it: a fixed port gives byte-identical output run after run",
    )
    demo.set_defaults(handler=_cmd_demo)

    search = sub.add_parser(
        "search",
        parents=[verbose],
        help="find the kept samples nearest to a text or an image in an output's index",
    )
    search.add_argument("output", help="output folder of a run (local, s3://, gs://); --flags go to Beam")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="text query, matched against the images (cross-modal)")
    query.add_argument("--image", metavar="FILE", help="image query, matched against the images")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--model", help="embed queries with this model instead of the output's own")
    search.add_argument("--pretrained", help="with --model: its open_clip pretrained tag or checkpoint")
    search.add_argument("--json", action="store_true", help="one JSON object per result")
    search.set_defaults(handler=_cmd_search)

    audit = sub.add_parser("audit", parents=[verbose], help="write a self-contained HTML report of an output")
    audit.add_argument("output", help="output folder of a run (local, s3://, gs://); --flags go to Beam")
    audit.add_argument("--out", help="the HTML file to write (default OUTPUT/report.html)")
    audit.add_argument("--compare", metavar="OTHER_OUTPUT", help="a second output, shown side by side")
    audit.set_defaults(handler=_cmd_audit)

    corpus = sub.add_parser("corpus", parents=[verbose], help="generate the sample web into a folder")
    corpus.add_argument("--out", required=True, help="the folder written: a new or empty one")
    corpus.add_argument(
        "--samples", type=int, default=2000, help="image/caption pairs generated (default 2000)"
    )
    corpus.add_argument(
        "--seed", type=int, default=0, help="seed: the same seed gives the same web (default 0)"
    )
    corpus.set_defaults(handler=_cmd_corpus)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[verbose],
        help="train a CLIP model on each output with open_clip's trainer and score it with clip_benchmark",
    )
    evaluate.add_argument("outputs", nargs="*", metavar="OUTPUT", help="output folders of runs (local)")
    evaluate.add_argument(
        "--eval", required=True, metavar="EVAL_DIR", help="eval set(s) in clip_benchmark's WebDataset layout"
    )
    evaluate.add_argument("--samples-seen", type=int, default=20_000, help="samples each model trains on")
    evaluate.add_argument("--seeds", type=int, default=3, help="trainings per output (seeds 0..K-1)")
    evaluate.add_argument(
        "--model",
        help="architecture trained from scratch: an open_clip model name or a model config .json "
        "(default: ViT-B-32 on a GPU, winnow-tiny-clip's small one on CPU)",
    )
    evaluate.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    evaluate.add_argument("--workdir", help="checkpoints and logs (default: beside --report)")
    evaluate.add_argument("--report", default="evaluation.json", help="the JSON file written")
    evaluate.add_argument(
        "--ablate",
        action="store_true",
        help="run the pipeline once per curation configuration on --input, then evaluate every output",
    )
    evaluate.add_argument("--input", action="append", help="with --ablate: the input (repeatable)")
    evaluate.add_argument(
        "--ablations",
        help="with --ablate: a comma-separated subset of "
        "no-filter,text,clip-top30,dedup,default,repair,balance (default: all)",
    )
    evaluate.add_argument("--workers", type=int, help="with --ablate: local worker processes")
    _add_config_args(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    serve = sub.add_parser("serve", parents=[verbose], help="serve a generated sample web on loopback")
    serve.add_argument("dir", help="a folder `winnow corpus` wrote")
    serve.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free one)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.set_defaults(handler=_cmd_serve)

    config = sub.add_parser("config", parents=[verbose], help="print the effective config with every key")
    _add_config_args(config)
    config.set_defaults(handler=_cmd_config)
    for command in sub.choices.values():  # what a mistyped flag is compared with (`check_beam_args`)
        command.set_defaults(flags=[flag for action in command._actions for flag in action.option_strings])
    return parser


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (local or any Beam filesystem)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key"
    )
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_NAMES)}")
    parser.add_argument(
        "--input-format",
        help="input.input_format: auto (the default: by each file's suffix), the lists parquet, csv, "
        "tsv, jsonl, txt, the web archives wat, warc, arc, pages (the list's URLs are web pages, "
        "harvested for their image/alt-text pairs) or webdataset (a pool of downloaded shards: "
        "img2dataset, DataComp, Winnow)",
    )


def _config(args: argparse.Namespace, base_text: str | None = None) -> RunConfig:
    from pipeline.config import load_config

    overrides = list(args.set)
    if getattr(args, "stages", None):
        overrides.append(f"run.stages=[{args.stages}]")
    if getattr(args, "input_format", None):
        overrides.append(f"input.input_format={args.input_format}")
    return load_config(args.config, overrides, base_text=base_text)


def check_beam_args(beam_args: Sequence[str], flags: Sequence[str] = ()) -> None:
    """`UsageError` unless every argument Winnow's parser left is a Beam pipeline option given as
    `--name=value`: a mistyped flag is refused, naming it (and the closest of the command's own
    `flags` or Beam's options), instead of passed on and ignored."""
    loose = [a for a in beam_args if not a.startswith("--")]
    if loose:
        raise UsageError(f"unexpected argument(s) {loose}; Beam options are given as --name=value")
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(beam_args))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # argparse's usage of every Beam option: not shown
            known = options.get_all_options()
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit as err:  # a Beam option with a value its parser refuses
        lines = said.getvalue().strip().splitlines() or [f"exit {err.code}"]
        raise UsageError(f"Beam option: {lines[-1].partition('error: ')[2] or lines[-1]}") from None
    strangers = set(given) - set(known)
    names = dict.fromkeys(a[2:].partition("=")[0] for a in beam_args)
    unknown = [f"--{name}" for name in names if name.replace("-", "_") in strangers]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], [f for f in flags if f.startswith("--")], n=1)
        guess = guess or difflib.get_close_matches(unknown[0], [f"--{name}" for name in known], n=1)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        raise UsageError(
            f"unknown option(s) {', '.join(unknown)}: neither this command's (see its --help) nor a "
            f"Beam pipeline option{hint}"
        )


def _cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.jobs import run_job

    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    check_beam_args(beam_args, args.flags)
    config = _config(args)
    stats = run_job(
        config,
        args.input or [],
        args.output,
        args.runner,
        beam_args,
        args.workers,
        show_progress=True,
        wait=not args.no_wait,
        retry_from=args.retry_failed,
    )
    if stats.get("dry_run"):
        print(format_dry_run(stats))
    elif stats.get("submitted"):
        job = f" job {stats['job_id']}" if stats.get("job_id") else ""
        print(
            f"submitted to {stats['runner']}{job}; it writes the shards, stats.json, the index and "
            f"report.html to {args.output} and marks it complete once done"
        )
    else:
        print(format_summary(stats, args.output, time.monotonic() - args.started))
        if stats.get("alarm"):
            banner = "!" * 78
            print(f"{banner}\nALARM: {stats['alarm']}\n{banner}", file=sys.stderr)
            return EXIT_ALARM
    return 0


def _cmd_demo(args: argparse.Namespace, _: list[str]) -> int:
    from pipeline.config import default_config_text, load_config
    from pipeline.demo import run_demo

    if args.samples < 1:
        raise UsageError(f"--samples ({args.samples}) must be >= 1")
    if args.seed < 0:
        raise UsageError(f"--seed ({args.seed}) must be >= 0")
    # The demo crawls its own sample web on loopback, which the SSRF guard otherwise refuses; all
    # its images are on that one host, which may take the whole thread pool at once.
    overrides = ["crawl.allow_private_networks=true", "crawl.max_per_host=0"]
    config = load_config(None, overrides, base_text=default_config_text())
    try:
        print(run_demo(args.workdir, args.samples, args.seed, config, workers=args.workers, port=args.port))
    except FileExistsError as err:
        raise UsageError(str(err)) from err
    return 0


def _cmd_search(args: argparse.Namespace, beam_args: list[str]) -> int:
    import json

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.output.index import search_output

    if args.k < 1:
        raise UsageError("-k must be >= 1")
    if args.text is not None:
        check_query_text(args.text)
    check_beam_args(beam_args, args.flags)
    FileSystems.set_options(PipelineOptions(beam_args))  # S3 endpoint and keys, GCP project
    hits = search_output(args.output, args.text, args.image, args.k, args.model, args.pretrained)
    if args.json:
        for hit in hits:
            print(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
    else:
        print(format_hits(hits))
    return 0


def _cmd_audit(args: argparse.Namespace, beam_args: list[str]) -> int:
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.lock import OutputLock, check_finished
    from pipeline.output.report import write_report
    from transforms.common.manifest import read_manifest

    check_beam_args(beam_args, args.flags)
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)  # S3 endpoint and keys, GCP project
    check_finished(args.output, "winnow audit")
    if args.compare:
        check_finished(args.compare, "winnow audit --compare")
    # The report written into a Winnow output is recorded in its manifest: no run may write there meanwhile.
    into_output = args.out is None and read_manifest(args.output) is not None
    with OutputLock(args.output, options) if into_output else contextlib.nullcontext():
        print(f"report: {write_report(args.output, args.out, args.compare, options)}")
    return 0


def check_query_text(text: str) -> None:
    """`UsageError` for a `--text` query with no words or with a control character (a pasted
    escape, a line break): every image has a nearest neighbour to any vector, so such a query
    would return results that mean nothing."""
    from transforms.common.checks import control_character

    bad = control_character(text)
    if bad:
        raise UsageError(f"--text {text!r} holds the control character {bad}; remove it")
    if not text.strip():
        raise UsageError(f"--text {text!r} has no words; give the words to search for")


def format_hits(hits: Sequence[Hit]) -> str:
    """Search results as a table: rank, score, uid, url and caption (both cut to fit a line)."""
    lines = [f"{'rank':>4}  {'score':>6}  {'uid':<32}  {'url':<48}  caption"]
    for hit in hits:
        url, caption = _cut(hit.url, 48), _cut(hit.caption, 60)
        lines.append(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.uid:<32}  {url:<48}  {caption}")
    return "\n".join(lines)


def _cut(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_corpus(args: argparse.Namespace, _: list[str]) -> int:
    from sampleweb import generate_corpus
    from sampleweb.evalset import EVAL_DIR, write_eval_set
    from transforms.common.manifest import list_files, record_files

    if args.samples < 1:
        raise UsageError(f"--samples ({args.samples}) must be >= 1")
    if args.seed < 0:
        raise UsageError(f"--seed ({args.seed}) must be >= 0")
    try:
        summary = generate_corpus(args.out, args.samples, args.seed)
    except FileExistsError as err:
        raise UsageError(str(err)) from err
    print(f"wrote {summary}")
    eval_set = write_eval_set(os.path.join(args.out, EVAL_DIR), args.seed)
    record_files(args.out, [f"{EVAL_DIR}/{name}" for name in list_files(os.path.join(args.out, EVAL_DIR))])
    print(eval_set)
    return 0


def _cmd_evaluate(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipeline.evaluate import EvaluateConfig, check_targets, evaluate_outputs, format_table, write_json
    from pipeline.evaluate.train import TrainingError, TrainRecipe, missing_requirements

    if beam_args:
        raise UsageError(f"unexpected argument(s) {beam_args}")
    if args.ablate == bool(args.outputs):
        raise UsageError("give either OUTPUT folders or --ablate with --input")
    if args.ablate and not args.input:
        raise UsageError("--ablate needs --input: the pairs every configuration curates")
    if not args.ablate and (args.input or args.config or args.set or args.stages or args.ablations):
        raise UsageError("--input, --ablations, --config, --set and --stages go with --ablate")
    if not os.path.isdir(args.eval):
        raise UsageError(f"--eval: {args.eval} is not a folder")
    workdir = args.workdir or os.path.join(os.path.dirname(os.path.abspath(args.report)), "evaluation")
    try:
        check_targets(args.report, workdir)  # before hours of training, not after
    except ValueError as err:
        raise UsageError(str(err)) from err
    missing = missing_requirements()
    if missing:
        raise UsageError(
            f"winnow evaluate needs the eval extra (pip install 'winnow[eval]'): {', '.join(missing)}"
        )
    if args.batch_size < 1:
        raise UsageError(f"--batch-size ({args.batch_size}) must be >= 1")
    import torch

    gpu = torch.cuda.is_available()
    try:
        config = EvaluateConfig(
            samples_seen=args.samples_seen,
            seeds=args.seeds,
            model=args.model or ("ViT-B-32" if gpu else "winnow-tiny-clip"),
            recipe=TrainRecipe(batch_size=args.batch_size, precision="amp" if gpu else "fp32"),
        )
    except ValueError as err:
        raise UsageError(str(err)) from err
    outputs, labels = list(args.outputs), None
    if args.ablate:
        from pipeline.evaluate.ablate import ablation_configs, run_ablations

        if args.stages:
            raise UsageError("--stages does not go with --ablate: each configuration sets its stages")
        names = [name for name in (args.ablations or "").split(",") if name]
        try:
            configs = ablation_configs(args.config, list(args.set), names)
        except ValueError as err:
            raise UsageError(str(err)) from err
        try:
            runs = run_ablations(configs, args.input, workdir, args.workers)
        except FileExistsError as err:
            raise UsageError(str(err)) from err
        labels = [name for name, _ in runs]
        outputs = [output for _, output in runs]
    try:
        rows = evaluate_outputs(outputs, args.eval, config, workdir, labels)
    except (ValueError, FileExistsError) as err:
        raise UsageError(str(err)) from err
    except TrainingError as err:
        print(f"winnow: {err}", file=sys.stderr)
        return 1
    write_json(rows, args.report, args.eval, config)
    print(format_table(rows))
    print(f"evaluation: {args.report}")
    return 0


def _cmd_serve(args: argparse.Namespace, _: list[str]) -> int:
    from sampleweb import SampleWebServer, write_url_lists

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port ({args.port}) must be in 0..65535")
    if not os.path.exists(os.path.join(args.dir, "manifest.parquet")):
        raise UsageError(
            f"{args.dir} holds no sample web (manifest.parquet); create one with `winnow corpus`"
        )
    server = SampleWebServer(args.dir, host=args.host, port=args.port)
    try:
        server.start()
    except FileNotFoundError as err:  # no files/ beside the manifest
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(_cannot_listen(args.host, args.port, err)) from None
    try:
        urls, truth = write_url_lists(args.dir, server.base_url)
        message = f"serving {args.dir} at {server.base_url} (url list: {urls}, truth: {truth}); Ctrl-C stops"
        print(message, flush=True)
        threading.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
    return 0


def _cannot_listen(host: str, port: int, err: OSError) -> str:
    """Why `winnow serve` cannot listen on `host:port`, and what to do instead."""
    where = f"cannot serve on {host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use; choose another --port (0 = any free one)"
    if err.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose another --port"
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        return f"{where}: --host {host} is not an address of this machine"
    return f"{where}: {err.strerror or err}"


def _cmd_config(args: argparse.Namespace, _: list[str]) -> int:
    import yaml

    print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
