"""The `siked` command line.

    siked model prepare              # embedded SmolLM2-135M-Instruct -> safetensors folder
    siked data list --json           # problems loaded / excluded per benchmark and split
    siked config show CONFIG [k=v]   # the resolved configuration
    siked sandbox run FILE.py        # run one PoT program in the sandbox
    siked teacher CONFIG [k=v ...]   # teacher generation + verification + distillation set
    siked train CONFIG [k=v ...]     # student training
    siked run CONFIG [k=v ...]       # the whole pipeline (teacher, iterations, evaluation, report)
    siked resume RUN                 # continue a failed or killed run from its artifacts
    siked status RUN [--json]        # done / running / failed / missing for every step of a run
    siked plan CONFIG [k=v] [--json] # every step: reuse (whose output) or run, and what runs amount to
    siked plan EXPERIMENT --power [--pilot RESULTS.json] [--effect POINTS]  # what it can detect
    siked experiment FILE [k=v ...]  # every arm and seed of a comparison, then its paired statistics
    siked verify RUN                 # re-hash every output a run uses; name altered or missing files
    siked gc [--dry-run]             # delete step outputs no run refers to
    siked eval MODEL [k=v ...]       # evaluate any checkpoint or model
    siked serve CONFIG [k=v ...] --cron "0 3 * * *"   # serve on a schedule (needs a Prefect server)
    siked report RUN                 # Markdown report + plots of a run folder (path or URL)

Each subcommand imports what it needs when it runs, so `siked --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from distill.models import prepare_builtin_model
    from storage.paths import models_dir

    path = prepare_builtin_model(models_dir(), force=args.force)
    print(path)
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from flows.commands.data_listing import list_benchmarks, list_config_benchmarks

    if args.config:
        from flows.commands.config_files import read_config

        report = list_config_benchmarks(read_config(args.config, args.overrides))
    else:
        report = list_benchmarks(data_dir=args.data_dir, source=args.source)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in report["benchmarks"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in row["excluded_reasons"].items())
            print(f"{row['benchmark']:<12} {row['split']:<10} loaded {row['loaded']:>6}  "
                  f"excluded {row['excluded']:>4}  {reasons}")
            for detail in row.get("excluded_records", []):
                print(f"    excluded: {detail}")
        for err in report.get("errors", []) + report.get("unusable", []):
            print(f"error: {err}", file=sys.stderr)
    # 2 for a set no run could use (bad input, as configuration errors), 1 for data that could not be read
    return 2 if report.get("unusable") else 1 if report.get("errors") else 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from distill.config import to_yaml
    from flows.commands.config_files import read_config

    print(to_yaml(read_config(args.config, args.overrides)), end="")
    return 0


def _cmd_sandbox_run(args: argparse.Namespace) -> int:
    from distill.sandbox import SandboxLimits, run_program

    with open(args.file, encoding="utf-8") as handle:
        code = handle.read()
    result = run_program(code, SandboxLimits(timeout_s=args.timeout))
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from flows.teacher import run_teacher_cli

    return run_teacher_cli(args.config, args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from flows.commands.train_cli import run_train_cli

    return run_train_cli(args.config, args.overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.server.serve import serve_cli

    return serve_cli(args.config, args.overrides, cron=args.cron, timezone=args.timezone, name=args.name,
                     stage=args.stage, dry_run=args.dry_run)


def _cmd_report(args: argparse.Namespace) -> int:
    from flows.reports.report import RunNotFound, write_report
    from storage.paths import layout_for_run_dir

    try:
        path, _ = write_report(layout_for_run_dir(args.run))
    except (RunNotFound, ValueError) as exc:
        print(f"siked: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.commands.run_cli import run_cli

    return run_cli(args.config, args.overrides)


def _cmd_resume(args: argparse.Namespace) -> int:
    from flows.commands.run_cli import resume_cli

    return resume_cli(args.run)


def _cmd_status(args: argparse.Namespace) -> int:
    from flows.commands.run_cli import status_cli

    return status_cli(args.run, args.json)


def _cmd_plan(args: argparse.Namespace) -> int:
    from flows.commands.plan import plan_cli

    if args.power or args.pilot or args.effect is not None:
        from distill.config import ConfigError
        from flows.commands.plan_power import check_effect, power_plan
        from flows.experiment_file import is_experiment_file

        if not is_experiment_file(args.config):
            raise ConfigError(f"{args.config}: --power, --pilot and --effect take an experiment file")
        check_effect(args.effect)
        print(power_plan(args.config, args.overrides, args.pilot, args.effect))
        return 0
    return plan_cli(args.config, args.overrides, args.json)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from flows.experiment import experiment_cli

    return experiment_cli(args.file, args.overrides, collect=args.collect)


def _cmd_verify(args: argparse.Namespace) -> int:
    from flows.commands.store_cli import verify_cli

    return verify_cli(args.run)


def _cmd_gc(args: argparse.Namespace) -> int:
    from flows.commands.store_cli import gc_cli

    return gc_cli(args.runs_root, args.dry_run)


def _cmd_export(args: argparse.Namespace) -> int:
    from flows.commands.export import ExportDamaged, ExportError, export_student
    from storage.fs import ArtifactError, ArtifactMissing

    try:
        path = export_student(args.run, args.to, args.iteration)
    except (ExportError, ArtifactMissing) as exc:  # asked for what is not there, or into a used folder
        print(f"siked: {exc}", file=sys.stderr)
        return 2
    except (ExportDamaged, ArtifactError) as exc:  # the run's own files are damaged
        print(f"siked: {exc}", file=sys.stderr)
        return 1
    if args.push_to_hub:
        from flows.commands.export import push_to_hub

        try:
            print(f"pushed to {push_to_hub(path, args.push_to_hub, args.private)}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 -- the Hub's errors (auth, network, names) are many
            print(f"siked: {path} is exported, but pushing it to the Hub as {args.push_to_hub} failed: "
                  f"{exc.__class__.__name__}: {exc}", file=sys.stderr)
            return 1
    print(path)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from flows.commands.run_cli import eval_cli

    return eval_cli(args.model, args.overrides, args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siked", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="prepare models").add_subparsers(dest="action", required=True)
    prepare = model.add_parser("prepare", help="turn the embedded SmolLM2 GGUF into a safetensors folder")
    prepare.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    prepare.set_defaults(func=_cmd_model_prepare)

    data = sub.add_parser("data", help="benchmarks").add_subparsers(dest="action", required=True)
    listing = data.add_parser("list", help="problems loaded and excluded per benchmark and split")
    listing.add_argument("config", nargs="?", default=None,
                         help="list the sets this config names (its own files too) instead of the built-ins")
    listing.add_argument("overrides", nargs="*", metavar="key=value")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--data-dir", default=None, help="default: $SIKED_DATA_DIR")
    listing.add_argument("--source", choices=["local", "hub"], default="local")
    listing.set_defaults(func=_cmd_data_list)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved configuration")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    show.set_defaults(func=_cmd_config_show)

    sandbox = sub.add_parser("sandbox", help="PoT sandbox").add_subparsers(dest="action", required=True)
    run = sandbox.add_parser("run", help="run one program and print its result as JSON")
    run.add_argument("file")
    run.add_argument("--timeout", type=float, default=5.0)
    run.set_defaults(func=_cmd_sandbox_run)

    run = sub.add_parser("run", help="the whole SIKeD pipeline: teacher, training, iterations, evaluation")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", metavar="key=value")
    run.set_defaults(func=_cmd_run)

    resume = sub.add_parser("resume", help="continue a failed or killed run from its artifacts")
    resume.add_argument("run", help="the run folder (path or URL)")
    resume.set_defaults(func=_cmd_resume)

    status = sub.add_parser("status", help="every step of a run: done, missing or failed")
    status.add_argument("run", help="the run folder (path or URL)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    plan = sub.add_parser("plan", help="what `siked run` or `siked experiment` would do: every step, reuse or run")
    plan.add_argument("config", help="a run config or an experiment file")
    plan.add_argument("overrides", nargs="*", metavar="key=value")
    plan.add_argument("--json", action="store_true", help="a JSON list of {step, iteration, kind, action, ...}")
    plan.add_argument("--power", action="store_true",
                      help="for an experiment: each comparison's minimum detectable effect (80%% power, alpha 0.05)")
    plan.add_argument("--pilot", metavar="RESULTS_JSON", help="with --power: discordance measured in this results.json")
    plan.add_argument("--effect", type=float, metavar="POINTS", help="with --power: questions and seeds this effect needs")
    plan.set_defaults(func=_cmd_plan)

    experiment = sub.add_parser("experiment", help="run every arm and seed of an experiment file, then compare them")
    experiment.add_argument("file", help="an experiment YAML (experiments/*.yaml)")
    experiment.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every arm")
    experiment.add_argument("--collect", action="store_true",
                            help="run nothing: write results and report from the runs finished so far")
    experiment.set_defaults(func=_cmd_experiment)

    check = sub.add_parser("verify", help="re-hash every output a run uses against its manifest")
    check.add_argument("run", help="the run folder (path or URL)")
    check.set_defaults(func=_cmd_verify)

    gc = sub.add_parser("gc", help="delete step outputs that no run refers to")
    gc.add_argument("--dry-run", action="store_true", help="list them, delete nothing")
    gc.add_argument("--runs-root", default=None, help="default: $SIKED_HOME/runs")
    gc.set_defaults(func=_cmd_gc)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint folder or model on the configured benchmarks")
    evaluate.add_argument("model", help="checkpoint folder, builtin:NAME or Hub id")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value")
    evaluate.add_argument("--config", default=None, help="a config whose eval section to use")
    evaluate.set_defaults(func=_cmd_eval)

    for name, func, text in [
        ("teacher", _cmd_teacher, "teacher generation, verification and the distillation set"),
        ("train", _cmd_train, "train a student"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("config")
        cmd.add_argument("overrides", nargs="*", metavar="key=value")
        cmd.set_defaults(func=func)

    serve = sub.add_parser("serve", help="serve the pipeline on a cron schedule (needs a Prefect server)")
    serve.add_argument("config")
    serve.add_argument("overrides", nargs="*", metavar="key=value")
    serve.add_argument("--cron", default=None,
                       help='cron schedule, e.g. "0 3 * * *" (none: runs are started from the UI)')
    serve.add_argument("--timezone", default="UTC", help="IANA timezone of the cron schedule")
    serve.add_argument("--name", default=None, help="deployment name (default: the config's name)")
    serve.add_argument("--stage", default=None, help="flow to run: siked (whole pipeline) or teacher")
    serve.add_argument("--dry-run", action="store_true", help="print the deployment as JSON and exit")
    serve.set_defaults(func=_cmd_serve)

    export = sub.add_parser("export", help="copy a run's student out as a Hugging Face model folder with a model card")
    export.add_argument("run", help="the run folder (path or URL)")
    export.add_argument("--iteration", type=int, default=None, help="which iteration's student (default: the last)")
    export.add_argument("--to", required=True, help="the new model folder")
    export.add_argument("--push-to-hub", metavar="REPO", default=None,
                        help="also upload it to the Hugging Face Hub as this model repository (user/name)")
    export.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    export.set_defaults(func=_cmd_export)

    report = sub.add_parser("report", help="write a run's Markdown report and plots into <run>/report/")
    report.add_argument("run", help="the run folder: a local path or an fsspec URL")
    report.set_defaults(func=_cmd_report)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse, except that `key=value` overrides may also follow an option (`siked eval MODEL
    --config C k=v`): argparse alone stops collecting a positional list at the first option."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in item and not item.startswith("-") for item in extra):
        args.overrides.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from distill.config import ConfigError
    from storage.paths import NotARunFolder

    # Prefect's temporary API (no server configured) can take longer than its 20 s default to
    # start on a busy 2-core machine; set before prefect is imported.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    args = parse_arguments(build_parser(), argv)
    if argv is None:  # the `siked` program itself, not a caller inside another Python program
        _exit_cleanly_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"siked: configuration error: {exc}", file=sys.stderr)
        return 2
    except NotARunFolder as exc:
        print(f"siked: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from distill.models import BuiltinModelUnavailable
        from distill.scoring_guards import GuardFailed

        if not isinstance(exc, BuiltinModelUnavailable | GuardFailed):  # a guard's one line says it all
            raise
        print(f"siked: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("siked: interrupted", file=sys.stderr)
        return 130
    finally:
        from flows import prefect_api

        prefect_api.abandon()


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a scheduler stopping the job, `kill`) unwinds like Ctrl-C: child processes are
    ended and Prefect's temporary API server is shut down instead of being left orphaned."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
