"""Where an MNIST baseline epoch's time goes: wall-clock against CPU seconds, ours and PyTorch.

    python -m benchmarks.epochs --data-dir ../shared/data [--epochs 8] [--quick]

For each side, a fresh subprocess trains the `report000-mnist-baseline` network (batch 64, Adam,
affine augmentation) for `--epochs` epochs and prints each epoch's wall-clock seconds, CPU
seconds (user + system) and the cores that makes. "keras, tf.data defaults" is our side with
the autotuner's optimization thread back on (tf.data's default); our pipelines turn it off.

Then it times what that thread costs on its own: it iterates the same training pipeline for
1 to 5 seconds and times the deletion of the iterator, with tf.data's default options and with
ours (`keras_resnet_lab.data.pipeline.PIPELINE_OPTIONS`). Keras deletes each epoch's iterator
early in the next epoch, and nothing trains until the deletion returns.

Last, it times the affine augmentation alone on one thread over one epoch of batches:
TensorFlow's `ImageProjectiveTransformV3` (ours, inside the tf.data `map`) against PyTorch's
`affine_grid` + `grid_sample`.
"""

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks.run import cpu_seconds, run_worker

BATCH = 64
KERAS_TF_DEFAULTS = "keras, tf.data defaults"
TEARDOWN_LIFETIMES = (1, 2, 3, 4, 5)  # seconds of iteration before the iterator is deleted


def _epoch_row(wall, cpu):
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores": round(cpu / wall, 2)}


def _mnist_bundle(data_dir, quick):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_resnet_lab as lab

    recipe = lab.get_recipe("report000-mnist-baseline").config(data_dir=data_dir)
    options = {**recipe.dataset_options, **({"train_subset_per_class": 100} if quick else {})}
    bundle = lab.load_dataset("mnist", data_dir=data_dir, batch_size=BATCH, seed=0,
                              validation_split=recipe.validation_split, **options)
    return recipe, bundle


def _tf_data_defaults(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = True
    return dataset.with_options(options)


def keras_epochs(data_dir, epochs, quick, tf_data_defaults=False):
    import keras

    from keras_resnet_lab.training import fitting

    recipe, bundle = _mnist_bundle(data_dir, quick)
    model = fitting.build(recipe, bundle.input_shape, bundle.num_classes)
    fitting.prepare(model, recipe, bundle.num_examples["train"])
    rows = []

    class Meter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = (time.perf_counter(), cpu_seconds())

        def on_epoch_end(self, epoch, logs=None):
            rows.append(_epoch_row(time.perf_counter() - self.start[0], cpu_seconds() - self.start[1]))

    train = _tf_data_defaults(bundle.train) if tf_data_defaults else bundle.train
    fitting.fit(model, recipe, (train, None), epochs=epochs, callbacks=[Meter()])
    return rows


def teardown_seconds(data_dir, lifetimes, quick):
    """{options: [seconds `del iterator` took after iterating for each of `lifetimes`]}."""
    _, bundle = _mnist_bundle(data_dir, quick)
    pipelines = {"tf.data defaults": _tf_data_defaults(bundle.train.repeat()), "ours": bundle.train.repeat()}
    result = {}
    for name, dataset in pipelines.items():
        result[name] = []
        for lifetime in lifetimes:
            iterator, end = iter(dataset), time.perf_counter() + lifetime
            while time.perf_counter() < end:
                next(iterator)
            start = time.perf_counter()
            del iterator
            result[name].append(round(time.perf_counter() - start, 3))
    return result


def torch_epochs(data_dir, epochs, quick):
    import torch

    import keras_resnet_lab as lab
    from benchmarks.torch_models import BaselineCNN, random_affine

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    recipe = lab.get_recipe("report000-mnist-baseline").config()
    bundle = lab.load_dataset("mnist", data_dir=data_dir, validation_split=recipe.validation_split, seed=0,
                              train_subset_per_class=100 if quick else None)
    x, y = bundle.arrays["train"]
    x, y = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y)
    model = BaselineCNN(**recipe.model_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(epochs):
        start = (time.perf_counter(), cpu_seconds())
        model.train()
        for index in torch.randperm(len(y), generator=generator).split(BATCH):
            images = (random_affine(x[index], generator) - 0.1307) / 0.3081
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), y[index]).backward()
            optimizer.step()
        rows.append(_epoch_row(time.perf_counter() - start[0], cpu_seconds() - start[1]))
    return rows


def augmentation_seconds(framework, batches):
    """Seconds one thread takes to apply the affine augmentation to `batches` MNIST batches."""
    if framework == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        from keras_resnet_lab.data.pipeline import make_augmenter

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        augment = tf.function(make_augmenter(["affine"]))
        images, seed = tf.random.uniform((BATCH, 28, 28, 1)), tf.constant([1, 2], tf.int64)
        augment(images, seed)
        start = time.perf_counter()
        for _ in range(batches):
            augment(images, seed)
        return time.perf_counter() - start
    import torch

    from benchmarks.torch_models import random_affine

    torch.set_num_threads(1)
    images, generator = torch.rand(BATCH, 1, 28, 28), torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(batches):
        random_affine(images, generator)
    return time.perf_counter() - start


def _worker(argv):
    kind, framework, data_dir, epochs = argv[:4]
    quick = "--quick" in argv
    if kind == "epochs" and framework == "torch":
        result = torch_epochs(data_dir, int(epochs), quick)
    elif kind == "epochs":
        result = keras_epochs(data_dir, int(epochs), quick, tf_data_defaults=framework == KERAS_TF_DEFAULTS)
    elif kind == "teardown":
        result = teardown_seconds(data_dir, TEARDOWN_LIFETIMES[:1] if quick else TEARDOWN_LIFETIMES, quick)
    else:
        result = augmentation_seconds(framework, 20 if quick else 844)  # 844 batches: one MNIST epoch
    print("RESULT " + json.dumps(result))


def _worker_result(*args):
    result = run_worker(list(args), timeout=1800, module="benchmarks.epochs")
    if isinstance(result, dict) and "error" in result:
        raise SystemExit(f"benchmarks.epochs {' '.join(args)} failed: {result['error']}")
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_RESNET_LAB_DATA"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a small subset: checks that it runs, not the speed")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir (or KERAS_RESNET_LAB_DATA) must name the folder that holds MNIST")
    quick = ["--quick"] if args.quick else []
    epochs = str(1 if args.quick else args.epochs)
    frameworks = ["keras", KERAS_TF_DEFAULTS]
    try:
        import torch  # noqa: F401
        frameworks.append("torch")
    except ImportError:
        print("PyTorch is not installed: our side only (pip install -e \".[bench]\").")
    for framework in frameworks:
        rows = _worker_result("epochs", framework, args.data_dir, epochs, *quick)
        print(f"{framework}: epoch wall s / CPU s / cores")
        for number, row in enumerate(rows, start=1):
            print(f"  {number:2d}  {row['wall_s']:6.2f}  {row['cpu_s']:6.2f}  {row['cores']:4.2f}")
        print(f"  median wall {statistics.median(r['wall_s'] for r in rows):.2f} s, "
              f"median CPU {statistics.median(r['cpu_s'] for r in rows):.2f} s")
    teardown = _worker_result("teardown", "keras", args.data_dir, "0", *quick)
    print("deleting the training iterator after iterating for " +
          ", ".join(f"{s} s" for s in TEARDOWN_LIFETIMES[:len(teardown["ours"])]) + ": seconds it blocked")
    for name, seconds in teardown.items():
        print(f"  {name:<17} " + "  ".join(f"{s:6.3f}" for s in seconds))
    for framework in (f for f in frameworks if f != KERAS_TF_DEFAULTS):
        seconds = _worker_result("augment", framework, args.data_dir, "0", *quick)
        print(f"affine augmentation alone, one thread, {'20' if args.quick else '844'} batches of {BATCH}: "
              f"{framework} {seconds:.2f} s")


if __name__ == "__main__":
    main()
