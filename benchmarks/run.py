"""Training throughput and time-to-accuracy, ours against plain PyTorch, in one run.

    python -m benchmarks.run [--data-dir DIR] [--repeats 3] [--tta-repeats 3] [--quick] [--gpu] [--only cpu|gpu]
                             [--model NAME ...] [--torch-channels-last] [--out DIR]

Every measurement runs in a fresh subprocess (so each has its own peak memory and thread
pools), and each case alternates ours and PyTorch `--repeats` times: this machine's speed drifts
by up to 30% over minutes, and interleaving keeps the drift out of the ratio. Throughput is the
median images/s of several timed windows after a warm-up, through `train`'s own code path (our
tf.data pipeline and `training.fitting`, the path `train` takes) against a plain PyTorch loop over in-memory
tensors with the same network, batch size and optimizer (Adam); each side's figure is the median
of its repeats. Time-to-accuracy is the training seconds the MNIST baseline recipe needs to reach
99.0% test accuracy, against PyTorch running the same recipe (network, one-cycle Adam, batch 64,
affine augmentation, a validation pass every epoch), alternated `--tta-repeats` times. With a
GPU visible to Keras (or `--gpu`), ResNet-50 at 224x224 with mixed precision (float16) and
cifar_resnet20 are measured on it as well, on whichever Keras backend `KERAS_BACKEND` names: on
a backend other than TensorFlow both sides read batches already on the GPU, since the tf.data
pipeline is TensorFlow's. `--torch-channels-last` runs the PyTorch reference in its tuned
channels-last layout. PyTorch is optional (`pip install -e ".[bench]"`); without it our rows
print alone.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    shape: tuple  # HWC
    num_classes: int = 10
    device: str = "cpu"
    mixed_precision: bool = False
    steps_per_execution: int = None  # None: `train`'s default for the model
    cpu_replicas: int = 1  # `TrainConfig.cpu_replicas`
    model_options: tuple = ()  # (name, value) pairs; default: the small stem for resnet18
    jit_compile: bool = False  # `TrainConfig.jit_compile`: XLA

    @property
    def label(self):
        extra = " small stem" if self.model == "resnet18" else ""
        precision = (" mixed fp16" if self.device == "gpu" else " mixed bf16") if self.mixed_precision else ""
        size = "x".join(map(str, self.shape[:2]))
        calls = f" spe{self.steps_per_execution}" if self.steps_per_execution else ""
        replicas = f" cpu_replicas={self.cpu_replicas}" if self.cpu_replicas > 1 else ""
        xla = " xla" if self.jit_compile else ""
        return f"{self.model}{extra} {size} b{self.batch}{precision}{calls}{replicas}{xla} {self.device}"

    def to_json(self):
        """The case as a worker subprocess's argument."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        fields = json.loads(text)
        return cls(**{**fields, "shape": tuple(fields["shape"]),
                      "model_options": tuple(tuple(pair) for pair in fields.get("model_options", ()))})


CPU_CASES = [
    Case("baseline_cnn", 64, (28, 28, 1)),
    Case("baseline_cnn", 128, (28, 28, 1)),
    Case("mnist_resnet", 128, (28, 28, 1)),
    Case("cifar_resnet20", 128, (32, 32, 3)),
    Case("resnet18", 128, (32, 32, 3)),
    Case("baseline_cnn", 64, (28, 28, 1), cpu_replicas=2),
    Case("baseline_cnn", 128, (28, 28, 1), cpu_replicas=2),
    Case("mnist_resnet", 128, (28, 28, 1), cpu_replicas=2),
]
GPU_CASES = [
    Case("resnet50", 128, (224, 224, 3), num_classes=1000, device="gpu", mixed_precision=True),
    Case("cifar_resnet20", 128, (32, 32, 3), device="gpu"),
    Case("cifar_resnet20", 128, (32, 32, 3), device="gpu", steps_per_execution=16),
]
TARGET_ACCURACY = 0.99
# Recipes whose real epochs are timed against their model's throughput case (`--recipe`), with the
# training images per class that make an epoch last seconds, not minutes (None: the whole dataset;
# a much shorter epoch would be mostly per-epoch overhead, which a real run spreads over more steps).
RECIPE_CASES = {"report000-mnist-baseline": None, "report002-mnist-resnet20": 500}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds():
    """This process's CPU seconds so far, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Windows:
    """Timed windows: images/s, and the cores the process kept busy (CPU seconds / wall seconds).

    Threads that sleep while they wait (TensorFlow's) show how long a window's cores sat idle:
    a window that stalled reads well below its usual figure. Threads that spin (PyTorch's OpenMP)
    read near 2.0 on a 2-core machine whenever they run.
    """

    def __init__(self):
        self.rates, self.cores, self.spans = [], [], []

    def start(self):
        self._start = (time.perf_counter(), cpu_seconds(), time.time())

    def stop(self, images):
        wall = time.perf_counter() - self._start[0]
        self.rates.append(images / wall)
        self.cores.append((cpu_seconds() - self._start[1]) / wall)
        self.spans.append((self._start[2], time.time(), images))

    def summary(self, skip=0):
        """Median images/s and cores over the windows after the first `skip`, with each window kept.

        `timed_span` is when those windows ran (seconds since the epoch, for matching other logs
        by time) and how many images they trained on.
        """
        rates, cores, spans = self.rates[skip:], self.cores[skip:], self.spans[skip:]
        return {"images_per_second": statistics.median(rates), "cores": statistics.median(cores),
                "windows": [{"images_per_second": round(r, 1), "cores": round(c, 2)} for r, c in zip(rates, cores)],
                "timed_span": {"start": spans[0][0], "stop": spans[-1][1], "images": sum(s[2] for s in spans)}}


def window_steps(case, quick):
    """(steps per timed window, windows): about 2 to 5 seconds a window on 2 CPU cores."""
    if quick:
        return 2, 1
    if case.device == "gpu":
        return (48, 3) if case.model == "resnet50" else (192, 3)
    return (8, 3) if case.model in ("resnet18", "cifar_resnet20") else (64, 3)


def sample_count(case):
    return 4096 if case.shape[0] <= 64 else 4 * case.batch


# ------------------------------------------------------------------ our side

def keras_throughput(case, quick):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_resnet_lab as lab  # first, as a script would: it picks TensorFlow's kernels before TensorFlow loads

    import keras
    import numpy as np
    from keras_resnet_lab.training import fitting
    from keras_resnet_lab.training.compiling import gpu_available
    from keras_resnet_lab.training.replicas import configure_cpu_replicas

    backend = keras.backend.backend()
    if case.device == "cpu" and backend != "tensorflow":
        return {"error": f"the CPU cases run on Keras's TensorFlow backend, not {backend!r}"}
    if case.device == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    elif not gpu_available():
        return {"error": f"no GPU visible to Keras's {backend} backend"}
    options = dict(case.model_options) or ({"stem": "small"} if case.model == "resnet18" else {})
    steps, windows = window_steps(case, quick)
    config = lab.TrainConfig(model=case.model, model_options=options, batch_size=case.batch, optimizer="adam",
                             learning_rate=1e-3, mixed_precision=case.mixed_precision, epochs=windows + 1,
                             steps_per_execution=case.steps_per_execution, cpu_replicas=case.cpu_replicas,
                             jit_compile=case.jit_compile).validate()
    configure_cpu_replicas(config.cpu_replicas)  # as `train` does, before any TensorFlow op
    rng = np.random.default_rng(0)
    count = sample_count(case)
    x = rng.integers(0, 256, (count, *case.shape), dtype=np.uint8)
    y = rng.integers(0, case.num_classes, count)
    data = _our_pipeline(x, y, case) if backend == "tensorflow" else _device_batches(x, y, case)
    model = fitting.prepare(fitting.build(config, case.shape, case.num_classes), config, count)  # as `train` does
    timed = Windows()

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            timed.start()

        def on_epoch_end(self, epoch, logs=None):
            timed.stop(steps * case.batch)

    fitting.fit(model, config, (data, None), steps_per_epoch=steps, callbacks=[Clock()])
    return {**timed.summary(skip=1), "peak_rss_mb": peak_rss_mb(), "backend": backend,  # epoch 1 is the warm-up
            "device_name": _keras_device_name(backend, case), "onednn": _onednn(backend),
            "steps_per_execution": model.steps_per_execution, "parameters": lab.parameter_counts(model)["trainable"]}


def _our_pipeline(x, y, case):
    """`train`'s tf.data pipeline (uint8 in, scaled and normalized in the map, prefetched)."""
    from keras_resnet_lab.data.pipeline import Preprocessing, make_dataset

    prep = Preprocessing(case.shape[-1], case.shape[:2], source_size=case.shape[:2])
    return make_dataset(x, y, prep, case.batch, shuffle_seed=0).repeat()


def _device_batches(x, y, case):
    """Batches already on the GPU, cycled, for backends without tf.data (PyTorch's side is fed the same way)."""
    import itertools

    import keras

    images = keras.ops.convert_to_tensor(x.astype("float32") / 255)
    labels = keras.ops.convert_to_tensor(y)
    starts = range(0, len(x) - case.batch + 1, case.batch)
    batches = [(images[i:i + case.batch], labels[i:i + case.batch]) for i in starts]
    return (batch for batch in itertools.cycle(batches))  # fit takes generators, not other iterators


def _onednn(backend):
    """Whether TensorFlow runs its oneDNN kernels in this worker (None off the TensorFlow backend)."""
    if backend != "tensorflow":
        return None
    from keras_resnet_lab.hardware import onednn_enabled

    return onednn_enabled()


def _keras_device_name(backend, case):
    if case.device == "cpu":
        return "cpu"
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get("device_name")
    return "gpu"


def keras_time_to_accuracy(data_dir, quick):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_resnet_lab as lab  # before keras, as in keras_throughput

    import keras
    import numpy as np
    from keras_resnet_lab.training.evaluation import predict_labels
    from keras_resnet_lab.training.replicas import auto_cpu_replicas

    recipe = lab.get_recipe("report000-mnist-baseline").config(data_dir=data_dir, verbose="quiet", overwrite=True,
                                                             run_dir="benchmarks/results/tta-keras")
    if quick:
        recipe = recipe.replace(epochs=1, dataset_options={**recipe.dataset_options, "train_subset_per_class": 200})
    recipe = recipe.replace(cpu_replicas=auto_cpu_replicas(recipe))  # as `keras-resnet-lab train --recipe` runs it
    bundle = lab.load_dataset("mnist", data_dir=data_dir, batch_size=recipe.batch_size, seed=recipe.seed,
                              validation_split=recipe.validation_split, **recipe.dataset_options)
    curve, epochs = [], Windows()

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.start()

        def on_epoch_end(self, epoch, logs=None):
            epochs.stop(bundle.num_examples["train"])  # before the test pass, which the seconds leave out
            y_true, y_pred, _ = predict_labels(self.model, bundle.test)
            curve.append(float(np.mean(y_true == y_pred)))

    result = lab.train(recipe.model, bundle, config=recipe, callbacks=[TestAccuracy()])
    seconds = np.cumsum(result.history["seconds"])
    return _tta(curve, seconds, epochs)


RECIPE_EPOCHS = 3  # the first is the warm-up (tracing)


def keras_recipe_epoch(name, data_dir, quick):
    """A real recipe's training epochs through `train`: its data pipeline, augmentation, validation
    pass and checkpoints, on `RECIPE_CASES[name]` images per class (default 500). Returns images/s of the epochs after
    the first, and the throughput case with the same model, options, batch and input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_resnet_lab as lab
    from keras_resnet_lab.training.replicas import auto_cpu_replicas

    config = lab.get_recipe(name).config(data_dir=data_dir, verbose="quiet", overwrite=True, reports=False,
                                         run_dir=f"benchmarks/results/recipe-{name}")
    batch = config.resolved_phases()[0][3]  # the first phase's batch size
    subset = 20 if quick else RECIPE_CASES.get(name, 500)
    config = config.replace(epochs=2 if quick else RECIPE_EPOCHS, phases=[], batch_size=batch, schedule="constant",
                            early_stopping_patience=None)
    if subset is not None:
        config = config.replace(dataset_options={**config.dataset_options, "train_subset_per_class": subset})
    config = config.replace(cpu_replicas=auto_cpu_replicas(config))  # as `keras-resnet-lab train --recipe` runs it
    result = lab.train(config)
    seconds = result.history["seconds"][1:]
    examples = _train_examples(result.run_dir)
    model = result.model
    case = Case(config.model, batch, tuple(model.input_shape[1:]), steps_per_execution=model.steps_per_execution,
                cpu_replicas=config.cpu_replicas, model_options=tuple(sorted(config.model_options.items())))
    return {"images_per_second": examples / statistics.median(seconds), "epoch_seconds": seconds,
            "train_examples": examples, "case": json.loads(case.to_json()), "peak_rss_mb": peak_rss_mb()}


def _train_examples(run_dir):
    identity = json.loads((Path(run_dir) / "identity.json").read_text())
    return identity["data"]["num_examples"]["train"]


def _tta(curve, seconds, epochs):
    reached = [s for acc, s in zip(curve, seconds) if acc >= TARGET_ACCURACY]
    return {"seconds_to_target": float(reached[0]) if reached else None, "final_accuracy": curve[-1],
            "epochs": len(curve), "total_seconds": float(seconds[-1]), "peak_rss_mb": peak_rss_mb(),
            "cores": statistics.median(epochs.cores), "epoch_cores": [round(c, 2) for c in epochs.cores]}


# ------------------------------------------------------------------ the PyTorch reference

def torch_throughput(case, quick, channels_last=False, threads=None, compiled=False):
    """PyTorch's images/s for `case`: eager, or `compiled` with `torch.compile` (inductor)."""
    import torch

    from benchmarks.torch_models import build, parameter_count

    if case.device == "gpu" and not torch.cuda.is_available():
        return {"error": "no CUDA device visible to PyTorch"}
    device = torch.device("cuda" if case.device == "gpu" else "cpu")
    torch.backends.cudnn.benchmark = True  # what a GPU training script sets: the fastest convolution per shape
    torch.manual_seed(0)
    torch.set_num_threads(threads or os.cpu_count())
    model, chw = build(case.model, case.num_classes)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    trained = torch.compile(model) if compiled else model  # inductor, PyTorch's default backend
    count = sample_count(case)
    x = torch.rand(count, *chw, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, case.num_classes, (count,), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Our rule (`train`'s mixed precision): float16 with loss scaling on GPUs, bfloat16 on CPUs.
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=case.mixed_precision and device.type == "cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    steps, windows = window_steps(case, quick)

    def run(n):
        for _ in range(n):
            index = torch.randint(0, count, (case.batch,), device=device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, half, enabled=case.mixed_precision):
                loss = loss_fn(trained(x[index]), y[index])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        run(steps)  # the warm-up; compiles the model under torch.compile
    except Exception as error:  # inductor needs a C++ compiler and Python headers; say why it failed
        if not compiled:
            raise
        return {"error": f"torch.compile failed: {(str(error).strip().splitlines() or [type(error).__name__])[0][:200]}"}
    timed = Windows()
    for _ in range(windows):
        timed.start()
        run(steps)
        timed.stop(steps * case.batch)
    return {**timed.summary(), "peak_rss_mb": peak_rss_mb(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "parameters": parameter_count(model)}


def torch_time_to_accuracy(data_dir, quick):
    import numpy as np
    import torch

    import keras_resnet_lab as lab
    from benchmarks.torch_models import BaselineCNN, random_affine

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    recipe = lab.get_recipe("report000-mnist-baseline").config()
    epochs = 1 if quick else recipe.epochs
    bundle = lab.load_dataset("mnist", data_dir=data_dir, validation_split=recipe.validation_split, seed=recipe.seed,
                              train_subset_per_class=200 if quick else None)
    mean, std = 0.1307, 0.3081

    def tensors(split):
        x, y = bundle.arrays[split]
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std, torch.from_numpy(y)

    (x, y), (x_val, y_val), (x_test, y_test) = tensors("train"), tensors("validation"), tensors("test")
    model = BaselineCNN(**recipe.model_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    steps = int(np.ceil(len(y) / recipe.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    curve, validation, seconds, timed = [], [], [], Windows()
    for _ in range(epochs):
        start = time.perf_counter()
        timed.start()
        model.train()
        for index in torch.randperm(len(y), generator=generator).split(recipe.batch_size):
            images = (random_affine(x[index] * std + mean, generator) - mean) / std
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), y[index]).backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():  # the recipe validates every epoch (`train` picks the best epoch by it)
            validation.append(float((model(x_val).argmax(1) == y_val).float().mean()))
        seconds.append(time.perf_counter() - start)
        timed.stop(len(y))
        with torch.no_grad():
            curve.append(float((model(x_test).argmax(1) == y_test).float().mean()))
    return {**_tta(curve, np.cumsum(seconds), timed), "final_validation_accuracy": validation[-1]}


# ------------------------------------------------------------------ orchestration

def _worker(argv):
    kind, framework, payload = argv[:3]
    quick = "--quick" in argv
    if kind == "throughput":
        case = Case.from_json(payload)
        if framework == "keras":
            result = keras_throughput(case, quick)
        elif framework == "torch-compiled":  # inductor's CPU convolutions prefer channels-last
            result = torch_throughput(case, quick, channels_last=case.device == "cpu", compiled=True)
        else:
            result = torch_throughput(case, quick, channels_last="--torch-channels-last" in argv)
    elif kind == "recipe":
        result = keras_recipe_epoch(payload, argv[3], quick)
    else:
        fn = keras_time_to_accuracy if framework == "keras" else torch_time_to_accuracy
        result = fn(payload, quick)
    print("RESULT " + json.dumps(result))


def run_worker(args, timeout=1200, module="benchmarks.run"):
    """Runs `module`'s worker with `args` in a fresh process: its RESULT, or {"error": ...}."""
    try:
        done = subprocess.run([sys.executable, "-m", module, "--worker", *args], check=False,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


def _median_of(samples):
    """One side's figure: the median of its repeats, with every sample kept."""
    rates = [s["images_per_second"] for s in samples if "images_per_second" in s]
    if not rates:
        return next((s for s in samples if "error" in s), {})
    first = next(s for s in samples if "images_per_second" in s)
    cores = [s["cores"] for s in samples if "cores" in s]
    return {"images_per_second": statistics.median(rates), "samples": rates,
            "cores": statistics.median(cores) if cores else None, "cores_samples": cores,
            "windows": [s.get("windows", []) for s in samples if "images_per_second" in s],
            "peak_rss_mb": max(s["peak_rss_mb"] for s in samples if "peak_rss_mb" in s),
            **{key: first[key] for key in ("parameters", "backend", "device_name", "steps_per_execution") if key in first}}


def _alternate(args, repeats, torch_ok, timeout=1200, frameworks=("keras", "torch")):
    """Runs the worker `args` for each framework in turn, `repeats` times: their results, in order."""
    frameworks = [f for f in frameworks if f == "keras" or torch_ok]
    results = {framework: [] for framework in frameworks}
    for _ in range(repeats):
        for framework in frameworks:
            results[framework].append(run_worker([args[0], framework, *args[1:]], timeout))
    return results.get("keras", []), results.get("torch", []), results.get("torch-compiled", [])


def _ratio(ours, theirs):
    return (ours["images_per_second"] / theirs["images_per_second"]
            if ours.get("images_per_second") and theirs.get("images_per_second") else None)


def measure_case(case, repeats, flags, torch_ok, compiled=True):
    """Alternates ours, PyTorch eager and PyTorch compiled `repeats` times; each side's median."""
    frameworks = ("keras", "torch", "torch-compiled") if compiled and case.device == "cpu" else ("keras", "torch")
    ours, theirs, compiled_runs = (_median_of(r) for r in _alternate(["throughput", case.to_json(), *flags], repeats,
                                                                     torch_ok, frameworks=frameworks))
    return {"case": _row_label(case, ours, theirs), "ours": ours, "torch": theirs, "ratio": _ratio(ours, theirs),
            "torch_compiled": compiled_runs, "ratio_compiled": _ratio(ours, compiled_runs)}


def _row_label(case, ours, theirs):
    """The case, plus the GPU's name and our Keras backend where they are not the default."""
    notes = []
    if case.device == "gpu":
        notes.append(ours.get("device_name") or theirs.get("device_name") or "gpu")
    if ours.get("backend", "tensorflow") != "tensorflow":
        notes.append(f"Keras on {ours['backend']}")
    return case.label + (f" ({', '.join(notes)})" if notes else "")


def measure_time_to_accuracy(data_dir, repeats, quick, torch_ok):
    """Alternates ours and PyTorch `repeats` times; each side keeps the median seconds to target."""
    ours, theirs, _ = _alternate(["tta", data_dir, *quick], repeats, torch_ok, timeout=3000)
    summary = {}
    for side, results in (("ours", ours), ("torch", theirs)):
        if not results:  # PyTorch not installed
            continue
        done = [r for r in results if "seconds_to_target" in r]
        if not done:
            summary[side] = results[0]
            continue
        reached = [r["seconds_to_target"] for r in done]
        middle = sorted(done, key=lambda r: r["seconds_to_target"] or float("inf"))[len(done) // 2]
        median = statistics.median(reached) if None not in reached else None
        summary[side] = {**middle, "seconds_to_target": median, "samples": reached,
                         "cores_samples": [r.get("cores") for r in done]}
    return summary


def measure_recipe(name, data_dir, repeats, quick):
    """A recipe's epoch images/s against its model's throughput case, alternated `repeats` times."""
    recipes, throughputs = [], []
    for _ in range(repeats):
        recipes.append(run_worker(["recipe", "keras", name, data_dir, *quick], timeout=3000))
        if "case" in recipes[-1]:
            case = Case.from_json(json.dumps(recipes[-1]["case"]))
            throughputs.append(run_worker(["throughput", "keras", case.to_json(), *quick]))
    recipe, throughput = _median_of(recipes), _median_of(throughputs)
    label = Case.from_json(json.dumps(recipes[0]["case"])).label if "case" in recipes[0] else "-"
    return {"recipe": name, "case": label, "recipe_epoch": recipe, "throughput": throughput,
            "ratio": _ratio(recipe, throughput)}


def _gpu_visible():
    probe = "from keras_resnet_lab.training.compiling import gpu_available; print(int(gpu_available()))"
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return done.stdout.strip().splitlines()[-1:] == ["1"]


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt(value, pattern="{:,.0f}"):
    return "-" if value is None else pattern.format(value)


def _cores(ours, theirs):
    return f"{_fmt(ours.get('cores'), '{:.2f}')} / {_fmt(theirs.get('cores'), '{:.2f}')}"


def _samples(result):
    return ", ".join(_fmt(v, "{:.1f}") for v in result.get("samples", []))


HEADER = ("case", "ours img/s", "PyTorch img/s", "PyTorch compiled img/s", "ours/PyTorch", "ours/compiled",
          "cores busy ours / PyTorch", "ours peak MB", "PyTorch peak MB")


def _cells(row):
    ours, theirs, compiled = row["ours"], row["torch"], row.get("torch_compiled", {})
    return [row["case"], _fmt(ours.get("images_per_second")), _fmt(theirs.get("images_per_second")),
            _fmt(compiled.get("images_per_second")) if "error" not in compiled else "failed",
            _fmt(row["ratio"], "{:.2f}"), _fmt(row.get("ratio_compiled"), "{:.2f}"), _cores(ours, theirs),
            _fmt(ours.get("peak_rss_mb")), _fmt(theirs.get("peak_rss_mb"))]


def _line(cells, widths=(40, 11, 13, 22, 12, 13, 25, 12, 15)):
    return " ".join(f"{cell:>{w}}" if i else f"{cell:<{w}}" for i, (cell, w) in enumerate(zip(cells, widths)))


def _print_row(row):
    print(_line(_cells(row)), flush=True)
    for side in ("ours", "torch", "torch_compiled"):
        if "error" in row.get(side, {}):
            print(f"    {side} error: {row[side]['error']}")


def _print_recipe(row):
    recipe, throughput = row["recipe_epoch"], row["throughput"]
    print(f"{row['recipe']:<28} {row['case']:<40} {_fmt(recipe.get('images_per_second')):>10} "
          f"{_fmt(throughput.get('images_per_second')):>11} {_fmt(row['ratio'], '{:.2f}'):>6}", flush=True)
    for side in (recipe, throughput):
        if "error" in side:
            print(f"    error: {side['error']}")


def machine():
    """Where the figures were taken: CPU model, ISA flags, cores, libraries, kernel settings."""
    import importlib.metadata
    import platform

    from keras_resnet_lab.hardware import cpu_family, cpu_info  # imports no framework

    info = cpu_info()
    versions = {}
    for name in ("tensorflow", "keras", "torch", "jax", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    settings = {k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                           "KERAS_BACKEND") if k in os.environ}
    return {"cpu": info["model"], "isa": info["isa"], "family": cpu_family(info), "cores": info["cores"],
            "python": platform.python_version(), "versions": versions, "environment": settings}


def describe(meta):
    """One line naming the machine, for the printed and written results."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    settings = ", ".join(f"{k}={v}" for k, v in meta["environment"].items()) or "no kernel variables set"
    return (f"{meta['cpu']} ({meta['family']}: {' '.join(meta['isa']) or 'no AVX2'}), {meta['cores']} cores; "
            f"{versions}; {settings}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("KERAS_RESNET_LAB_DATA"))
    parser.add_argument("--quick", action="store_true", help="a few steps each: checks that it runs, not the speed")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per side (default 3)")
    parser.add_argument("--tta-repeats", type=int, default=3, help="alternating time-to-accuracy runs per side")
    parser.add_argument("--gpu", action="store_true", help="add the GPU cases even if no GPU is detected")
    parser.add_argument("--only", choices=("cpu", "gpu"), help="run only the CPU or only the GPU cases")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="run the PyTorch reference in channels-last memory format (its tuned GPU setting)")
    parser.add_argument("--model", action="append", choices=sorted({c.model for c in CPU_CASES + GPU_CASES}),
                        help="only this model's cases, without time-to-accuracy (repeatable)")
    parser.add_argument("--recipe", action="append", metavar="NAME",
                        help="time a real recipe epoch against its model's throughput case (repeatable; needs "
                             "--data-dir; default with --data-dir: " + ", ".join(RECIPE_CASES) + ")")
    parser.add_argument("--xla", action="store_true", help="add each CPU case with jit_compile=True (XLA), ours only")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile rows (they compile for ~1 min)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    for flag, value in (("--repeats", args.repeats), ("--tta-repeats", args.tta_repeats)):
        if value < 1:
            parser.error(f"{flag} must be at least 1; received {value}.")
    quick = ["--quick"] if args.quick else []
    repeats, tta_repeats = (1, 1) if args.quick else (args.repeats, args.tta_repeats)
    reference = ["--torch-channels-last"] if args.torch_channels_last else []
    torch_ok = _torch_available()
    if not torch_ok:
        print("PyTorch is not installed (pip install -e '.[bench]'): only our rows print.")
    cases = [] if args.only == "gpu" else CPU_CASES[:1] if args.quick else list(CPU_CASES)  # quick: runs, not speed
    if args.only != "cpu" and (args.gpu or args.only == "gpu" or _gpu_visible()):
        cases += GPU_CASES
    elif args.only != "cpu" and not args.quick:
        print("No GPU visible to Keras: the GPU cases (ResNet-50 224x224 mixed fp16, cifar_resnet20) are skipped.")
    if args.model:
        cases = [case for case in cases if case.model in args.model]
    if args.xla:
        cases += [dataclasses.replace(case, jit_compile=True) for case in cases if case.device == "cpu"]
    meta = machine()
    print(f"Machine: {describe(meta)}")
    rows = []
    print(_line(HEADER))
    for case in cases:
        rows.append(measure_case(case, repeats, quick + reference, torch_ok, compiled=not args.no_compiled))
        _print_row(rows[-1])
    recipes = []
    names = args.recipe or ([] if args.model or not args.data_dir else list(RECIPE_CASES)[:1 if args.quick else None])
    if names and not args.data_dir:
        parser.error("--recipe needs --data-dir (or KERAS_RESNET_LAB_DATA): a recipe reads its real dataset")
    if names:
        print(f"\n{'recipe epoch':<28} {'throughput case':<40} {'recipe img/s':>10} {'case img/s':>11} {'ratio':>6}")
    for name in names:
        recipes.append(measure_recipe(name, args.data_dir, repeats, quick))
        _print_recipe(recipes[-1])
    tta = {}
    if args.model:
        print("\nTime-to-accuracy skipped: --model measures throughput only.")
    elif args.data_dir:
        tta = measure_time_to_accuracy(args.data_dir, tta_repeats, quick, torch_ok)
        print(f"\nTime to {TARGET_ACCURACY:.1%} MNIST test accuracy (report000-mnist-baseline recipe, "
              f"median of {tta_repeats} alternating runs per side):")
        for side, result in tta.items():
            print(f"  {side:<6} {_fmt(result.get('seconds_to_target'), '{:.1f} s')}  (runs: {_samples(result)}; "
                  f"final {_fmt(result.get('final_accuracy'), '{:.4f}')} after {result.get('epochs')} epochs, "
                  f"{_fmt(result.get('total_seconds'), '{:.1f}')} s, {_fmt(result.get('cores'), '{:.2f}')} cores busy)"
                  f"{'  error: ' + result['error'] if 'error' in result else ''}")
    else:
        print("\nTime-to-accuracy skipped: pass --data-dir (real MNIST) or set KERAS_RESNET_LAB_DATA.")
    _write(Path(args.out), rows, tta, recipes, {**meta, "quick": args.quick, "repeats": repeats,
                                                "torch_channels_last": args.torch_channels_last})
    ours = [row["ours"] for row in rows] + [tta.get("ours", {})] + [r[k] for r in recipes for k in ("recipe_epoch", "throughput")]
    failed = [side["error"] for side in ours if "error" in side]
    if failed:  # CI runs --quick to check that our side runs: an error of ours fails it (PyTorch's do not)
        print(f"\n{len(failed)} of our measurements failed; the first: {failed[0]}", file=sys.stderr)
        return 1


def write_atomic(path, text):
    """Writes to a temporary name, then renames. (The package has one too, but importing it would
    load TensorFlow into this orchestrating process, which otherwise never does.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _write(folder, rows, tta, recipes, meta):
    meta = {**meta, "date": time.strftime("%Y-%m-%d")}
    write_atomic(folder / "benchmark.json", json.dumps({"meta": meta, "throughput": rows, "time_to_accuracy": tta,
                                                       "recipes": recipes}, indent=1))
    lines = [f"Machine: {describe(meta)}; {meta['date']}.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    if recipes:
        lines += ["", "| recipe epoch | throughput case | recipe img/s | case img/s | recipe / case |", "|---|---|---|---|---|"]
        for row in recipes:
            lines.append(f"| {row['recipe']} | {row['case']} | {_fmt(row['recipe_epoch'].get('images_per_second'))} | "
                         f"{_fmt(row['throughput'].get('images_per_second'))} | {_fmt(row['ratio'], '{:.2f}')} |")
    if tta:
        lines += ["", f"| time to {TARGET_ACCURACY:.1%} MNIST test accuracy | seconds (median) | runs | "
                      "final accuracy | total seconds | cores busy (median epoch) |", "|---|---|---|---|---|---|"]
        for side, result in tta.items():
            lines.append(f"| {side} | {_fmt(result.get('seconds_to_target'), '{:.1f}')} | {_samples(result)} | "
                         f"{_fmt(result.get('final_accuracy'), '{:.4f}')} | {_fmt(result.get('total_seconds'), '{:.1f}')} | "
                         f"{_fmt(result.get('cores'), '{:.2f}')} |")
    write_atomic(folder / "benchmark.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
