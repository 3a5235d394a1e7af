"""Training throughput and time-to-accuracy, ours against plain PyTorch, in one run.

    python -m benchmarks.run [--data-dir DIR] [--quick] [--out benchmarks/results]

Every measurement runs in a fresh subprocess (so each has its own peak memory and thread
pools). Throughput is the median images/s of several timed windows after a warm-up, through
`train`'s own code path (our tf.data pipeline, `compile_model`, `model.fit`) against a plain
PyTorch loop over in-memory tensors with the same network, batch size and optimizer (Adam).
Time-to-accuracy is the training seconds the MNIST baseline recipe needs to reach 99.0% test
accuracy, against PyTorch running the same recipe (network, one-cycle Adam, batch 64, affine
augmentation). PyTorch is optional (`pip install -e ".[bench]"`); without it our rows print alone.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [  # (model, batch size, input shape HWC)
    ("baseline_cnn", 64, (28, 28, 1)),
    ("baseline_cnn", 128, (28, 28, 1)),
    ("mnist_resnet", 128, (28, 28, 1)),
    ("cifar_resnet20", 128, (32, 32, 3)),
    ("resnet18", 128, (32, 32, 3)),
]
TARGET_ACCURACY = 0.99


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def window_steps(model, quick):
    if quick:
        return 2, 1
    return (8, 3) if model in ("resnet18", "cifar_resnet20") else (64, 3)


# ------------------------------------------------------------------ our side

def keras_throughput(model_name, batch, shape, quick):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_resnet_lab as lab
    from keras_resnet_lab.data.pipeline import Preprocessing, make_dataset
    from keras_resnet_lab.training.train import compile_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4096, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, 4096)
    prep = Preprocessing(shape[-1], shape[:2], source_size=shape[:2])
    data = make_dataset(x, y, prep, batch, shuffle_seed=0).repeat()
    options = {"stem": "small"} if model_name == "resnet18" else {}
    model = lab.build_model(model_name, input_shape=shape, num_classes=10, **options)
    config = lab.TrainConfig(model=model_name, batch_size=batch, optimizer="adam", learning_rate=1e-3)
    compile_model(model, config, config.resolved_phases(), len(x))
    steps, windows = window_steps(model_name, quick)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(data, steps_per_epoch=steps, epochs=windows + 1, verbose=0, callbacks=[Clock()], shuffle=False)
    rate = statistics.median(steps * batch / t for t in times[1:])  # the first epoch is the warm-up
    return {"images_per_second": rate, "peak_rss_mb": peak_rss_mb(),
            "parameters": lab.parameter_counts(model)["trainable"]}


def keras_time_to_accuracy(data_dir, quick):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_resnet_lab as lab
    from keras_resnet_lab.training.evaluation import predict_labels

    recipe = lab.get_recipe("seed000-mnist-baseline").config(data_dir=data_dir, verbose="quiet", overwrite=True,
                                                             run_dir="benchmarks/results/tta-keras")
    if quick:
        recipe = recipe.replace(epochs=1, dataset_options={**recipe.dataset_options, "train_subset_per_class": 200})
    bundle = lab.load_dataset("mnist", data_dir=data_dir, batch_size=recipe.batch_size, seed=recipe.seed,
                              validation_split=recipe.validation_split, **recipe.dataset_options)
    curve = []

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            y_true, y_pred, _ = predict_labels(self.model, bundle.test)
            curve.append(float(np.mean(y_true == y_pred)))

    result = lab.train(recipe.model, bundle, config=recipe, callbacks=[TestAccuracy()])
    seconds = np.cumsum([row["seconds"] for row in result.history])
    return _tta(curve, seconds)


def _tta(curve, seconds):
    reached = [s for acc, s in zip(curve, seconds) if acc >= TARGET_ACCURACY]
    return {"seconds_to_target": float(reached[0]) if reached else None, "final_accuracy": curve[-1],
            "epochs": len(curve), "total_seconds": float(seconds[-1]), "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------ the PyTorch reference

def torch_throughput(model_name, batch, shape, quick):
    import torch

    from benchmarks.torch_models import build, parameter_count

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    model, chw = build(model_name)
    x = torch.rand(4096, *chw)
    y = torch.randint(0, 10, (4096,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    steps, windows = window_steps(model_name, quick)

    def run(n):
        for _ in range(n):
            index = torch.randint(0, 4096, (batch,))
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()

    run(steps)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run(steps)
        rates.append(steps * batch / (time.perf_counter() - start))
    return {"images_per_second": statistics.median(rates), "peak_rss_mb": peak_rss_mb(),
            "parameters": parameter_count(model)}


def torch_time_to_accuracy(data_dir, quick):
    import numpy as np
    import torch

    import keras_resnet_lab as lab
    from benchmarks.torch_models import BaselineCNN, random_affine

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    recipe = lab.get_recipe("seed000-mnist-baseline").config()
    epochs = 1 if quick else recipe.epochs
    bundle = lab.load_dataset("mnist", data_dir=data_dir, validation_split=recipe.validation_split, seed=recipe.seed,
                              train_subset_per_class=200 if quick else None)
    mean, std = 0.1307, 0.3081

    def tensors(split):
        x, y = bundle.arrays[split]
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std, torch.from_numpy(y)

    (x, y), (x_test, y_test) = tensors("train"), tensors("test")
    model = BaselineCNN(**recipe.model_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    steps = int(np.ceil(len(y) / recipe.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    curve, seconds = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for index in torch.randperm(len(y), generator=generator).split(recipe.batch_size):
            images = (random_affine(x[index] * std + mean, generator) - mean) / std
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), y[index]).backward()
            optimizer.step()
            scheduler.step()
        seconds.append(time.perf_counter() - start)
        model.eval()
        with torch.no_grad():
            curve.append(float((model(x_test).argmax(1) == y_test).float().mean()))
    return _tta(curve, np.cumsum(seconds))


# ------------------------------------------------------------------ orchestration

def _worker(argv):
    kind, framework, *rest = argv
    quick = "--quick" in rest
    rest = [r for r in rest if r != "--quick"]
    if kind == "throughput":
        model, batch, shape = rest[0], int(rest[1]), tuple(int(v) for v in rest[2].split("x"))
        fn = keras_throughput if framework == "keras" else torch_throughput
        result = fn(model, batch, shape, quick)
    else:
        fn = keras_time_to_accuracy if framework == "keras" else torch_time_to_accuracy
        result = fn(rest[0], quick)
    print("RESULT " + json.dumps(result))


def _measure(args, timeout=1200):
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--worker", *args], capture_output=True, text=True,
                          timeout=timeout)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(value, pattern="{:,.0f}"):
    return "-" if value is None else pattern.format(value)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_RESNET_LAB_DATA"))
    parser.add_argument("--quick", action="store_true", help="a few steps each: checks that it runs, not the speed")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    torch_ok = _torch_available()
    if not torch_ok:
        print("PyTorch is not installed (pip install -e '.[bench]'): only our rows print.")
    rows = []
    header = f"{'case':<26} {'ours img/s':>11} {'torch img/s':>12} {'ratio':>6} {'ours MB':>8} {'torch MB':>9} {'params':>11}"
    print(header)
    for model, batch, shape in CASES[:1] if args.quick else CASES:  # quick: does it run, not how fast
        case = [model, str(batch), "x".join(map(str, shape)), *quick]
        ours = _measure(["throughput", "keras", *case])
        theirs = _measure(["throughput", "torch", *case]) if torch_ok else {}
        ratio = (ours.get("images_per_second") / theirs["images_per_second"]
                 if ours.get("images_per_second") and theirs.get("images_per_second") else None)
        row = {"case": f"{model} b{batch}", "ours": ours, "torch": theirs, "ratio": ratio}
        rows.append(row)
        print(f"{row['case']:<26} {_fmt(ours.get('images_per_second')):>11} {_fmt(theirs.get('images_per_second')):>12} "
              f"{_fmt(ratio, '{:.2f}'):>6} {_fmt(ours.get('peak_rss_mb')):>8} {_fmt(theirs.get('peak_rss_mb')):>9} "
              f"{_fmt(ours.get('parameters')):>11}", flush=True)
        for side in (ours, theirs):
            if "error" in side:
                print(f"    error: {side['error']}")
    tta = {}
    if args.data_dir:
        tta["ours"] = _measure(["tta", "keras", args.data_dir, *quick], timeout=3000)
        if torch_ok:
            tta["torch"] = _measure(["tta", "torch", args.data_dir, *quick], timeout=3000)
        print(f"\nTime to {TARGET_ACCURACY:.1%} MNIST test accuracy (seed000-mnist-baseline recipe):")
        for side, result in tta.items():
            print(f"  {side:<6} {_fmt(result.get('seconds_to_target'), '{:.1f} s')}  "
                  f"(final {_fmt(result.get('final_accuracy'), '{:.4f}')} after {result.get('epochs')} epochs, "
                  f"{_fmt(result.get('total_seconds'), '{:.1f}')} s){'  error: ' + result['error'] if 'error' in result else ''}")
    else:
        print("\nTime-to-accuracy skipped: pass --data-dir (real MNIST) or set KERAS_RESNET_LAB_DATA.")
    _write(Path(args.out), rows, tta, args.quick)


def _write(folder, rows, tta, quick):
    import platform

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "quick": quick,
            "date": time.strftime("%Y-%m-%d")}
    (folder / "benchmark.json").write_text(json.dumps({"meta": meta, "throughput": rows, "time_to_accuracy": tta}, indent=1))
    lines = ["| case | ours img/s | PyTorch img/s | ours/PyTorch | ours peak MB | PyTorch peak MB |", "|---|---|---|---|---|---|"]
    for row in rows:
        ours, theirs = row["ours"], row["torch"]
        lines.append(f"| {row['case']} | {_fmt(ours.get('images_per_second'))} | {_fmt(theirs.get('images_per_second'))} | "
                     f"{_fmt(row['ratio'], '{:.2f}')} | {_fmt(ours.get('peak_rss_mb'))} | {_fmt(theirs.get('peak_rss_mb'))} |")
    (folder / "benchmark.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
