"""The `keras-resnet-lab` command. It only fills `TrainConfig`s and calls the Python API."""

import argparse
import os
import re
import shutil
import sys
import tomllib

from .errors import ConfigError

# Flags of `train` and `compare` that map one to one onto TrainConfig fields: (type, help).
CONFIG_FLAGS = {
    "--epochs": (int, "epochs to train"),
    "--batch-size": (int, "examples per batch (with several devices: all of them together)"),
    "--optimizer": (str, "sgd, adam, adamw or rmsprop"),
    "--learning-rate": (float, "the peak learning rate"),
    "--schedule": (str, "constant, step, cosine, onecycle or plateau"),
    "--weight-decay": (float, "decoupled weight decay, times the learning rate each step (not on biases and "
                              "batch norm): 5e-3 at rate 0.1 is about SGD's usual 5e-4 L2"),
    "--clipnorm": (float, "clip each gradient's norm to this"),
    "--label-smoothing": (float, "label smoothing, e.g. 0.1"),
    "--validation-split": (float, "fraction of train held out to pick the best epoch"),
    "--early-stopping-patience": (int, "stop after this many epochs without improvement"),
    "--seed": (int, "the random seed (data order, augmentation, initialization)"),
    "--steps-per-execution": (int, "training steps per call (unset: chosen per model)"),
    "--run-dir": (str, "the run folder (unset: runs/<recipe> or runs/<model>-<dataset>-<hash>)"),
    "--data-dir": (str, "folder of the dataset files (default $KERAS_RESNET_LAB_DATA)"),
    "--weights": (str, "'imagenet' or a .pth/.safetensors checkpoint (resnet18-152)"),
    "--trainable-last": (int, "train only the last N units (blocks, stem, head)"),
    "--devices": (int, "local GPUs or CPU devices to train on (unset: all)"),
}


def _parse_value(key, text):
    """A `--set` value as TOML (numbers, booleans, lists, tables, quoted strings); a bare word
    such as `adam` is the string itself. Anything else that is not TOML is refused."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as error:
        if not text.lstrip().startswith(("[", "{", '"', "'")):  # no TOML structure: a plain string (a path, a name)
            return text
        where = re.sub(r"column (\d+)", lambda m: f"column {int(m.group(1)) - 4}", str(error))  # less our "v = "
        raise ConfigError(f"--set {key}={text}: not a TOML value ({where}). Quote a string as "
                         f"{key}='\"...\"'; lists are [1, 2], tables {{key = 1}}.") from None


def _overrides(args):
    """TrainConfig fields from the flags given, then `--set key=value` (dotted keys for dicts)."""
    values = {}
    for flag in CONFIG_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            values[flag[2:].replace("-", "_")] = value
    if getattr(args, "overwrite", False):
        values["overwrite"] = True
    if getattr(args, "quiet", False):
        values["verbose"] = "quiet"
    for item in getattr(args, "set", None) or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set takes key=value; received {item!r}")
        if "." in key:
            outer, inner = key.split(".", 1)
            values.setdefault(outer, {})[inner] = _parse_value(key, text)
        else:
            values[key] = _parse_value(key, text)
    return values


def _merge(config, overrides):
    for key in ("model_options", "dataset_options"):
        if key in overrides:
            overrides[key] = {**getattr(config, key), **overrides[key]}
    return config.replace(**overrides)


def _add_config_flags(parser):
    from .training.config import TrainConfig

    defaults = TrainConfig()
    settings = parser.add_argument_group("training settings (unset: the recipe's or config file's, else the default shown)")
    for flag, (kind, text) in CONFIG_FLAGS.items():
        default = getattr(defaults, flag[2:].replace("-", "_"))
        settings.add_argument(flag, type=kind, metavar=kind.__name__.upper(),
                              help=f"{text} (default: {default})" if default is not None else text)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any TrainConfig field, e.g. --set model_options.stem='\"small\"' --set phases=...")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if the run folder holds a run")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--export", action="store_true", help="also export a SavedModel to saved_models/<run>")


def cmd_models(args):
    from .models import build_model, get_spec, list_models, parameter_counts

    print(f"{'name':<16} {'input':<12} {'classes':>7} {'trainable params':>17}  description")
    for name in list_models():
        spec = get_spec(name)
        if name == "cifar_resnet" or (not args.all and name in ("resnet101", "resnet152")):
            count = "-"
        else:
            count = f"{parameter_counts(build_model(name))['trainable']:,}"
        shape = "x".join(map(str, spec.input_shape))
        print(f"{name:<16} {shape:<12} {spec.num_classes:>7} {count:>17}  {spec.description}")


def cmd_recipes(args):
    from .training.recipes import RECIPES

    for name in sorted(RECIPES):
        recipe = RECIPES[name]
        origin = f"report {recipe.report}" if recipe.report.isdigit() else recipe.report
        print(f"{name}\n    {origin}: {recipe.description}\n    the report's figure: {recipe.reported}"
              f"\n    ours: {recipe.measured}")


def cmd_train(args):
    from .training import TrainConfig
    from .training.train import train
    from .training.recipes import get_recipe

    from .training.config import read_config_file

    given = set()  # the fields a recipe or config file sets (the flags' are in `overrides`)
    if args.recipe:
        recipe = get_recipe(args.recipe)
        config, given = recipe.config(), set(recipe.settings)
    elif args.config:
        config = TrainConfig.from_file(args.config)
        given = set(read_config_file(args.config))
    else:
        config = TrainConfig()
    if args.model:
        config = config.replace(model=args.model)
    if args.dataset:
        config = config.replace(dataset=args.dataset)
    overrides = _overrides(args)
    config = _merge(config, overrides)
    _set_process_env(args)
    if "cpu_replicas" not in overrides and "cpu_replicas" not in given:
        config = _auto_replicas(config, args)
    result = train(config)
    print(f"{result.metrics['split']} accuracy {result.metrics['accuracy']:.4f}  macro F1 "
          f"{result.metrics['f1_macro']:.4f}  run folder {result.run_dir}")
    if args.export:
        _export(result.run_dir)


def _auto_replicas(config, args):
    """This process trains one model: split its batches across the cores where that is faster."""
    from .training.replicas import auto_cpu_replicas

    count = auto_cpu_replicas(config.validate())
    if count > 1 and not args.quiet:
        print(f"cpu_replicas={count}: each batch split across the {count} cores ({config.model} has no batch norm); "
              "--set cpu_replicas=1 turns it off.")
    return config.replace(cpu_replicas=count)


def _export(run_dir):
    from .exporting import export

    print(f"Exported a SavedModel to {export(run_dir)}")


def _run_compare(configs, run_dir, args):
    from .training.compare import compare

    overrides = _overrides(args)
    overrides.pop("run_dir", None)
    configs = [_merge(c, dict(overrides)) for c in configs]
    result = compare(configs, run_dir=run_dir)
    print(result.table())
    print(f"\nPlots and tables in {result.run_dir}")
    return result


def cmd_compare(args):
    from .training.compare import configs_for

    if not (args.models and args.dataset) and not args.recipes:
        raise SystemExit("error: compare needs --models A B ... --dataset D, or --recipes R1 R2 ...")
    configs = configs_for(models=args.models, dataset=args.dataset if args.models else None, recipes=args.recipes)
    result = _run_compare(configs, args.run_dir or f"runs/compare-{args.dataset or 'recipes'}", args)
    if args.export:
        for run in result.results:
            _export(run.run_dir)


def cmd_demo(args):
    from .training.compare import configs_for
    from .training.recipes import DEMO_RECIPES

    from .training.run_folder import MODEL

    result = _run_compare(configs_for(recipes=DEMO_RECIPES), args.run_dir or "runs/demo", args)
    # The winner is chosen on validation data; the test split only reports how it does.
    best = max(result.results, key=lambda r: max(r.history.get("val_accuracy") or [0.0]))
    target = result.run_dir / "best_model.keras"
    shutil.copyfile(best.run_dir / MODEL, target)
    print(f"Best by validation accuracy: {best.config.model} ({best.metrics['accuracy']:.4f} test accuracy), "
          f"saved as {target}")
    if args.export:
        _export(best.run_dir)


def cmd_reproduce(args):
    from .training.reproduce import describe_plan, plan, reproduce

    if args.list:
        print(describe_plan(plan(args.only, args.seeds, args.long_seeds, args.run_dir)))
        return
    report = reproduce(args.only, args.seeds, args.long_seeds, args.run_dir, args.data_dir, args.quiet,
                       train=not args.report_only)
    print(f"Report: {report} (and {report.with_suffix('.html')})")


def cmd_export(args):
    from .exporting import export

    print(export(args.run_dir, args.export_dir, version=args.version, overwrite=args.overwrite))


def cmd_predict(args):
    import csv
    import json

    from .exporting import load_exported, predict_files

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be 1 or more (how many classes to list); received {args.top_k}.")
    rows, problems = predict_files(load_exported(args.model), args.inputs, top_k=args.top_k)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "rank", "class", "probability"])
        for row in rows:
            for rank, (name, probability) in enumerate(row["top"], start=1):
                writer.writerow([row["file"], rank, name, f"{probability:.6f}"])
    else:
        width = max([len(r["file"]) for r in rows] + [4])
        print(f"{'file':<{width}}  top classes (probability)")
        for row in rows:
            print(f"{row['file']:<{width}}  " + ", ".join(f"{n} ({p:.3f})" for n, p in row["top"]))
    if problems and not rows:
        raise SystemExit(1)


def cmd_visualize(args):
    from pathlib import Path

    from .exporting import load_run, prepare_images, read_image
    from .plots import plot_activations

    model, prep, _, name = load_run(args.run_dir)
    image = prepare_images(read_image(args.image)[None], prep)[0].numpy()
    out = Path(args.out or Path(args.run_dir) / "plots" / f"activations_{Path(args.image).stem}")
    for path in plot_activations(model, image, layers=args.layers, path=out, per=args.per):
        print(path)


def cmd_tune(args):
    import dataclasses

    from .tuning import TuneConfig, read_leaderboard, tune

    if args.report:
        print(read_leaderboard(args.report))
        return
    if not args.config:
        raise SystemExit("error: tune needs --config tuning/FILE.toml (or --report tuning/PROJECT)")
    _set_distributed_env(args)
    config = TuneConfig.from_file(args.config)
    changes = {k: v for k, v in (("max_trials", args.max_trials), ("tuner", args.tuner), ("max_epochs", args.max_epochs),
                                 ("directory", args.directory), ("project_name", args.project_name)) if v is not None}
    if args.overwrite:
        changes["overwrite"] = True
    train_changes = _overrides(args)
    train_changes.pop("overwrite", None)
    config = dataclasses.replace(config, train=_merge(config.train, train_changes), **changes)
    result = tune(config=config, train_best=args.train_best)
    if result is None:
        print(f"Worker {args.role} finished; the chief prints the leaderboard.")
        return

    print(read_leaderboard(result.directory))
    print(f"Best: {result.best_hyperparameters}\nBest config: {result.directory / 'best.toml'} "
          f"(keras-resnet-lab train --config {result.directory / 'best.toml'})")
    if args.train_best:
        print(f"Best configuration retrained: test accuracy {result.best_run.metrics['accuracy']:.4f} "
              f"in {result.best_run.run_dir}")
        if args.export:
            _export(result.best_run.run_dir)


def _set_process_env(args):
    """One process of a multi-process JAX run: the flags fill Keras's own variables."""
    from .training.devices import PROCESS_ENV

    for name, value in zip(PROCESS_ENV, (args.coordinator, args.num_processes, args.process_id)):
        if value is not None:
            os.environ[name] = str(value)


def _set_distributed_env(args):
    """keras-tuner's distributed mode reads three variables; the oracle defaults to loopback."""
    if not args.role:
        return
    host, _, port = (args.oracle or "127.0.0.1:8000").rpartition(":")
    os.environ["KERASTUNER_TUNER_ID"] = args.role
    os.environ["KERASTUNER_ORACLE_IP"] = host.strip("[]") or "127.0.0.1"  # [::1]:8000 -> ::1
    os.environ["KERASTUNER_ORACLE_PORT"] = port


def _examples(*lines):
    """A subcommand's examples, shown below its flags."""
    text = "\n".join(f"  {line}" if line.startswith("keras-resnet-lab") else line for line in lines)
    return {"epilog": f"examples:\n{text}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="keras-resnet-lab",
        description="Compare plain CNNs with residual networks on Keras 3: train, compare, tune, ship.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (each command has its own --help, with examples)")
    models = sub.add_parser("models", help="list the model zoo with parameter counts",
                            **_examples("keras-resnet-lab models", "keras-resnet-lab models --all"))
    models.add_argument("--all", action="store_true", help="also count ResNet-101/152 (slower)")
    models.set_defaults(func=cmd_models)
    sub.add_parser("recipes", help="list the recipes that reproduce the student reports' experiments",
                   **_examples("keras-resnet-lab recipes")).set_defaults(func=cmd_recipes)

    train = sub.add_parser("train", help="train one model (a recipe, a config file or flags)", **_examples(
        "keras-resnet-lab train --recipe report000-mnist-baseline --data-dir data",
        "keras-resnet-lab train --model resnet18 --dataset digits --epochs 10 --set model_options.stem='\"small\"'",
        "keras-resnet-lab train --config my_run.toml --seed 2 --export",
        "Interrupted, the same command resumes from the last finished epoch."))
    source = train.add_mutually_exclusive_group()
    source.add_argument("--recipe", help="a name from `keras-resnet-lab recipes`")
    source.add_argument("--config", help="a TOML or YAML file of TrainConfig fields")
    train.add_argument("--model", help="a name from `keras-resnet-lab models`")
    train.add_argument("--dataset", help="mnist, fashion_mnist, cifar10, cifar100, digits, image_folder")
    processes = train.add_argument_group("a run of several processes (KERAS_BACKEND=jax; Keras's KERAS_DISTRIBUTION_* variables)")
    processes.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    processes.add_argument("--num-processes", type=int, help="how many processes train this one model")
    processes.add_argument("--process-id", type=int, help="this process: 0 (writes the run folder) to N-1")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    compare = sub.add_parser("compare", help="train several models on one dataset and tabulate them", **_examples(
        "keras-resnet-lab compare --models baseline_cnn lenet5 mnist_resnet --dataset digits --epochs 20",
        "keras-resnet-lab compare --recipes report004-mnist-lenet report004-mnist-resnet --data-dir data"))
    compare.add_argument("--models", nargs="+", metavar="MODEL", help="names from `keras-resnet-lab models`")
    compare.add_argument("--dataset", help="the dataset every --models model trains on")
    compare.add_argument("--recipes", nargs="+", metavar="RECIPE", help="names from `keras-resnet-lab recipes`")
    _add_config_flags(compare)
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo", help="the main job: baseline CNN vs residual nets on the 8x8 digits",
                          **_examples("keras-resnet-lab demo", "keras-resnet-lab demo --seed 3 --export"))
    _add_config_flags(demo)
    demo.set_defaults(func=cmd_demo)
    reproduce = sub.add_parser(
        "reproduce", help="run the student reports' experiments on several random seeds and write one report",
        **_examples("keras-resnet-lab reproduce --data-dir data              # every CPU recipe, 3 seeds",
                    "keras-resnet-lab reproduce --only report004-mnist-lenet report004-mnist-resnet --seeds 5",
                    "keras-resnet-lab reproduce --list                        # the runs: done, to resume, to train",
                    "keras-resnet-lab reproduce --report-only                 # the report from the runs so far",
                    "Interrupted, the same command resumes: finished runs are read, the others resume."))
    reproduce.add_argument("--only", nargs="+", metavar="RECIPE",
                           help="these recipes (default: every one a CPU runs without downloads, shortest first)")
    reproduce.add_argument("--seeds", type=int, default=3, help="random seeds per recipe (default: 3)")
    reproduce.add_argument("--long-seeds", type=int, default=1,
                           help="random seeds of recipes that take over 15 minutes on a 2-core CPU (default: 1)")
    reproduce.add_argument("--run-dir", default="runs/reproduce", help="default: runs/reproduce")
    reproduce.add_argument("--data-dir", help="folder of the dataset files (default $KERAS_RESNET_LAB_DATA)")
    reproduce.add_argument("--list", action="store_true",
                           help="print the planned runs (done, to resume or to train) and the minutes left; "
                                "train nothing")
    reproduce.add_argument("--report-only", action="store_true",
                           help="write the report from the runs finished so far, training nothing")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars from the runs")
    reproduce.set_defaults(func=cmd_reproduce)

    export = sub.add_parser("export", help="export a trained run as a SavedModel for serving", **_examples(
        "keras-resnet-lab export runs/demo/report001-digits-resnet18",
        "keras-resnet-lab export runs/report000-mnist-baseline --export-dir saved_models/mnist --version 2"))
    export.add_argument("run_dir", help="a finished run folder, e.g. runs/report000-mnist-baseline")
    export.add_argument("--export-dir", help="default saved_models/<run name>")
    export.add_argument("--version", type=int, help="default: the next free version")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="classify image files with an exported model", **_examples(
        "keras-resnet-lab predict saved_models/report001-digits-resnet18 digit.png",
        "keras-resnet-lab predict saved_models/mnist/2 photos/ --top-k 1 --format csv"))
    predict.add_argument("model", help="saved_models/<name> (latest version) or saved_models/<name>/<version>")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per image (default: 3)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="table, json or csv (default: table)")
    predict.set_defaults(func=cmd_predict)
    tune = sub.add_parser("tune", help="keras-tuner search over learning rates, block counts, ...", **_examples(
        "keras-resnet-lab tune --config tuning/report004-mnist-resnet.toml --data-dir data",
        "keras-resnet-lab tune --config tuning/report004-mnist-resnet.toml --max-trials 4 --train-best",
        "keras-resnet-lab tune --report tuning/report004-mnist-resnet",
        "Interrupted, the same command resumes the search."))
    tune.add_argument("--config", help="a search definition, e.g. tuning/report004-mnist-resnet.toml")
    tune.add_argument("--report", metavar="DIR", help="print the leaderboard of tuning/<project> again")
    tune.add_argument("--max-trials", type=int, help="configurations to try (default: the search file's)")
    tune.add_argument("--max-epochs", type=int, help="epochs of the longest trial (default: the search file's)")
    tune.add_argument("--tuner", choices=("hyperband", "random", "bayesian", "grid"),
                      help="hyperband, random, bayesian or grid (default: the search file's)")
    tune.add_argument("--directory", help="default tuning")
    tune.add_argument("--project-name", help="default: the search file's name")
    tune.add_argument("--train-best", action="store_true", help="retrain the best configuration for its full epochs")
    tune.add_argument("--role", help="distributed search: 'chief' or a worker id such as 'worker0'")
    tune.add_argument("--oracle", metavar="HOST:PORT",
                      help="the chief's address (default 127.0.0.1:8000). The oracle has no authentication: "
                           "bind it to a trusted network only")
    _add_config_flags(tune)
    tune.set_defaults(func=cmd_tune)

    visualize = sub.add_parser("visualize", help="look inside a trained model")
    kinds = visualize.add_subparsers(dest="kind", required=True, metavar="{activations}",
                                     help="what to draw (each has its own --help)")
    activations = kinds.add_parser("activations", help="feature-map grids after the stem and each stage", **_examples(
        "keras-resnet-lab visualize activations runs/demo/report001-digits-resnet18 digit.png --per block"))
    activations.add_argument("run_dir", help="a finished run folder")
    activations.add_argument("image", help="an image file (converted to the model's size and channels)")
    activations.add_argument("--per", choices=("stage", "block"), default="stage",
                             help="one grid per stage or per block (default: stage)")
    activations.add_argument("--layers", nargs="+", help="explicit layer names instead")
    activations.add_argument("--out", help="default <run_dir>/plots/activations_<image name>")
    activations.set_defaults(func=cmd_visualize)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .errors import LabError, ProcessLost, os_error_message

    try:
        args.func(args)
    except ProcessLost as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # JAX's own shutdown would wait for the lost process, then abort with a stack dump
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # disk full, a read-only folder, a port in use: the system's words, one line
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Rerun the same command to resume from the last completed epoch.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
