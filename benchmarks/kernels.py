"""Where a CPU training step goes, kernel by kernel: our oneDNN primitives against PyTorch's.

    python -m benchmarks.kernels [--model mnist_resnet] [--threads 1 2] [--quick]

On CPUs both frameworks hand convolutions (and TensorFlow also pooling and dense layers) to
oneDNN, which can log every primitive it executes: its implementation, memory layouts, problem
shape and milliseconds (`ONEDNN_VERBOSE=1`). For each side, a fresh subprocess turns that log on
and trains the model exactly as `benchmarks.run`'s throughput case does (ours: `train`'s tf.data
pipeline, `compile_model` and `model.fit`; PyTorch: the plain loop). It keeps the primitives
executed during the timed windows and reports milliseconds per training step for each kind of
primitive and shape, side by side, then their total against the step's wall-clock time.

With one thread per side (TensorFlow: one intra-op and one inter-op thread; PyTorch:
`torch.set_num_threads(1)`), a row compares two kernels doing the same work on one core. With
two, TensorFlow runs independent primitives side by side while PyTorch splits each one across
both cores, so rows are no longer comparable; the step times are. Logging costs a little time
per primitive, so the steps run somewhat slower than in `benchmarks.run`.
"""

import argparse
import ctypes
import json
import os
import re
import sys
import tempfile
from collections import defaultdict

from benchmarks.run import CPU_CASES, Case, run_worker

VERBOSE_ENV = {"ONEDNN_VERBOSE": "1", "ONEDNN_VERBOSE_TIMESTAMP": "1"}
_CONV = re.compile(r"mb\d+_(?:g\d+)?ic(\d+)oc(\d+)_ih(\d+)oh\d+kh(\d+)sh(\d+)\w*?_iw(\d+)ow\d+kw(\d+)")
_POOL = re.compile(r"mb\d+ic(\d+)_ih(\d+)oh\d+kh(\d+)sh\d+\w*?_iw(\d+)ow\d+kw(\d+)")
_DENSE = re.compile(r"mb\d+ic(\d+)oc(\d+)$")


def parse_primitives(lines, start, stop):
    """oneDNN's verbose log lines -> {(kind, propagation, shape): [milliseconds, calls, implementations]}.

    Keeps the primitives executed between `start` and `stop` (seconds since the epoch; the log's
    timestamps are milliseconds). Reorders (layout conversions) are summed into one entry.
    """
    found = defaultdict(lambda: [0.0, 0, set()])
    for line in lines:
        fields = line.rstrip("\n").split(",")
        if not fields[0].startswith("onednn_verbose") or "exec" not in fields:
            continue
        at = fields.index("exec")
        if fields[at - 1] != "primitive":
            continue  # oneDNN Graph partitions: neither side compiles any
        try:
            stamp, milliseconds = float(fields[at - 2]), float(fields[-1])
        except ValueError:
            continue
        if not start * 1000 <= stamp <= stop * 1000:
            continue
        kind, implementation, propagation, problem = fields[at + 2], fields[at + 3], fields[at + 4], fields[-2]
        key = ("reorder", "", "all layouts") if kind == "reorder" else (kind, propagation, describe(kind, problem))
        entry = found[key]
        entry[0] += milliseconds
        entry[1] += 1
        entry[2].add(implementation or kind)
    return found


def describe(kind, problem):
    """A readable shape for oneDNN's problem descriptor, e.g. '16->16 3x3 s1 at 14x14'."""
    conv, pool, dense = _CONV.match(problem), _POOL.match(problem), _DENSE.match(problem)
    if kind == "convolution" and conv:
        ic, oc, ih, kh, sh, iw, kw = conv.groups()
        return f"{ic}->{oc} {kh}x{kw} s{sh} at {ih}x{iw}"
    if kind == "pooling" and pool:
        channels, ih, kh, iw, kw = pool.groups()
        return f"{channels} channels {kh}x{kw} at {ih}x{iw}"
    if kind == "inner_product" and dense:
        return "{}->{}".format(*dense.groups())
    return problem


class VerboseCapture:
    """Sends this process's standard output (where oneDNN writes its log) to a temporary file."""

    def __enter__(self):
        sys.stdout.flush()
        self._file = tempfile.TemporaryFile(mode="w+")
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)  # oneDNN writes through C's buffered stdout
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._file.seek(0)
        self.lines = self._file.readlines()
        self._file.close()


def measure(framework, case, threads, quick):
    """Trains `case` on `threads` threads with oneDNN's log on: per-step primitives and step time."""
    os.environ.update(VERBOSE_ENV)
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    from benchmarks.run import keras_throughput, torch_throughput

    with VerboseCapture() as capture:
        if framework == "keras":
            result = keras_throughput(case, quick)
        else:
            result = torch_throughput(case, quick, threads=threads)
    if "error" in result:
        return result
    span = result["timed_span"]
    steps = span["images"] / case.batch
    primitives = parse_primitives(capture.lines, span["start"], span["stop"])
    rows = [{"kind": kind, "propagation": propagation, "shape": shape, "ms_per_step": total / steps,
             "calls_per_step": calls / steps, "implementations": sorted(implementations)}
            for (kind, propagation, shape), (total, calls, implementations) in primitives.items()]
    return {"rows": rows, "images_per_second": result["images_per_second"],
            "step_ms": 1000 * case.batch / result["images_per_second"], "logged_lines": len(capture.lines)}


def side_by_side(ours, theirs):
    """Rows keyed by primitive and shape, largest first: (kind, propagation, shape, our row, theirs)."""
    keyed = {}
    for side, result in enumerate((ours, theirs)):
        for row in (result or {}).get("rows", []):
            key = (row["kind"], row["propagation"], row["shape"])
            keyed.setdefault(key, [None, None])[side] = row
    order = sorted(keyed.items(), key=lambda item: -max(r["ms_per_step"] for r in item[1] if r))
    return [(*key, *pair) for key, pair in order]


def _cell(row):
    if row is None:
        return "-", "-"
    return "/".join(row["implementations"]), f"{row['ms_per_step']:.2f}"


def format_table(case, threads, ours, theirs):
    title = f"{case.label}, {threads} thread{'s' if threads > 1 else ''} per side: oneDNN milliseconds per training step"
    lines = [title, "", "| primitive | shape | ours: kernel | ours ms | PyTorch: kernel | PyTorch ms |",
             "|---|---|---|---|---|---|"]
    for kind, propagation, shape, mine, other in side_by_side(ours, theirs):
        label = f"{kind} {propagation}" if propagation not in ("", "undef") else kind
        lines.append("| {} | {} | {} | {} | {} | {} |".format(label, shape, *_cell(mine), *_cell(other)))
    summaries = (("all oneDNN primitives", lambda side: _milliseconds(side["rows"])),
                 ("convolutions alone", lambda side: _milliseconds(side["rows"], "convolution")),
                 ("training step, wall clock", lambda side: side["step_ms"]))
    for label, figure in summaries:
        mine, other = (f"{figure(side):.2f}" if side else "-" for side in (ours, theirs))
        lines.append(f"| {label} | | | {mine} | | {other} |")
    return "\n".join(lines)


def _milliseconds(rows, kind=None):
    return sum(row["ms_per_step"] for row in rows if kind in (None, row["kind"]))


def _worker(argv):
    framework, payload, threads = argv[:3]
    case = Case.from_json(payload)
    print("RESULT " + json.dumps(measure(framework, case, int(threads), "--quick" in argv)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    models = [case.model for case in CPU_CASES]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist_resnet", choices=sorted(set(models)))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="threads per side, one pass each")
    parser.add_argument("--quick", action="store_true", help="a few steps: checks that it runs, not the speed")
    args = parser.parse_args(argv)
    case = CPU_CASES[models.index(args.model)]
    try:
        import torch  # noqa: F401
        frameworks = ["keras", "torch"]
    except ImportError:
        frameworks = ["keras"]
        print("PyTorch is not installed: our side only (pip install -e \".[bench]\").")
    quick = ["--quick"] if args.quick else []
    for threads in args.threads:
        results = {}
        for framework in frameworks:
            results[framework] = run_worker([framework, case.to_json(), str(threads), *quick],
                                            timeout=1200, module="benchmarks.kernels")
            if "error" in results[framework]:
                raise SystemExit(f"benchmarks.kernels: {framework} on {threads} thread(s) failed: "
                                 f"{results[framework]['error']}")
        if not results["keras"]["rows"]:
            raise SystemExit("benchmarks.kernels: oneDNN logged no primitives for our side; is TensorFlow built "
                             "with oneDNN (TF_ENABLE_ONEDNN_OPTS not 0)?")
        print(format_table(case, threads, results["keras"], results.get("torch")))
        print()


if __name__ == "__main__":
    main()
