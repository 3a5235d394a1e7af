"""Input pipelines alone against the training step that consumes them (images/s).

    python -m benchmarks.pipelines --data-dir ../shared/data [--quick]

Each row: the train pipeline's images/s when iterated alone (median of timed windows after a
warm-up), a training step's images/s through `train`'s own compile path on the same batches,
and their ratio (the pipeline must be >= 10x the step, or it would starve training).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import keras_resnet_lab as lab  # noqa: E402
from keras_resnet_lab.training import fitting  # noqa: E402

CASES = [
    # (label, dataset, dataset options, model, model options, batch size)
    ("digits / resnet18 small stem", "digits", {}, "resnet18", {"stem": "small"}, 64),
    ("mnist / baseline_cnn", "mnist", {}, "baseline_cnn", {}, 64),
    ("mnist affine aug / baseline_cnn", "mnist", {"augment": "affine", "standardize": True}, "baseline_cnn", {}, 64),
    ("cifar10 crop+flip / cifar_resnet20", "cifar10", {"augment": ["crop", "flip"], "standardize": True}, "cifar_resnet20", {}, 128),
    ("cats_vs_dogs 128 / resnet18", "image_folder",
     {"path": "cats_vs_dogs.tar.gz", "image_size": (128, 128), "augment": ["crop", "flip"]}, "resnet18", {}, 32),
    ("cats_vs_dogs 128 streamed / resnet18", "image_folder",
     {"path": "cats_vs_dogs.tar.gz", "image_size": (128, 128), "augment": ["crop", "flip"], "in_memory": False},
     "resnet18", {}, 32),
    ("cats_vs_dogs 128 streamed, disk cache / resnet18", "image_folder",
     {"path": "cats_vs_dogs.tar.gz", "image_size": (128, 128), "augment": ["crop", "flip"], "in_memory": False,
      "stream_cache": True}, "resnet18", {}, 32),
]


def images_per_second(run_window, batch_size, steps, windows):
    run_window(steps)  # warm-up: tracing, caches, autotuning
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run_window(steps)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def pipeline_rate(dataset, batch_size, steps, windows):
    iterator = iter(dataset.repeat())

    def window(n):
        for _ in range(n):
            next(iterator)

    return images_per_second(window, batch_size, steps, windows)


def training_rate(bundle, model_name, model_options, steps, windows):
    keras.backend.clear_session()
    config = lab.TrainConfig(model=model_name, model_options=model_options, batch_size=bundle.batch_size, epochs=1)
    model = fitting.prepare(fitting.build(config, bundle.input_shape, bundle.num_classes), config,
                            bundle.num_examples["train"])

    def window(n):
        fitting.fit(model, config, (bundle.train, None), steps_per_epoch=n)

    return images_per_second(window, bundle.batch_size, steps, windows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_RESNET_LAB_DATA"))
    parser.add_argument("--quick", action="store_true", help="few steps: checks that it runs, not the speed")
    parser.add_argument("--case", help="only the cases whose label contains this text, e.g. streamed")
    args = parser.parse_args(argv)
    steps, windows = (2, 1) if args.quick else (32, 3)
    print(f"{'case':<50} {'pipeline img/s':>15} {'train step img/s':>17} {'ratio':>7}")
    cases = [case for case in CASES if args.case in case[0]] if args.case else CASES[:2] if args.quick else CASES
    for label, name, options, model, model_options, batch in cases:
        if name != "digits" and not args.data_dir:
            print(f"{label:<50} skipped: pass --data-dir or set KERAS_RESNET_LAB_DATA")
            continue
        bundle = lab.load_dataset(name, data_dir=args.data_dir, batch_size=batch, **options)
        pipe = pipeline_rate(bundle.train, batch, steps * 4, windows)
        step_steps = max(2, steps // 8) if model.startswith("resnet") else steps
        step = training_rate(bundle, model, model_options, step_steps, windows)
        print(f"{label:<50} {pipe:>15,.0f} {step:>17,.0f} {pipe / step:>6.1f}x", flush=True)


if __name__ == "__main__":
    main()
