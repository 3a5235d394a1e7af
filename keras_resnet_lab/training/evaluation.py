"""Test-split metrics: accuracy, macro precision/recall/F1, per-class report, confusion matrix."""

import numpy as np

from .devices import even_batches, gathered_logits, process_count


def predict_labels(model, dataset, test_time_flip=False):
    """(true labels, predicted labels, probabilities) over a batched (image, label) dataset.

    `test_time_flip`: the logits are the mean of the image's and its mirror image's.
    """
    dataset = even_batches(dataset, training=False, own_part=False)  # JAX devices: padded, weights 0 for the pads
    images = dataset.map(lambda images, *rest: images)
    logits = _logits(model, images)
    if test_time_flip:
        logits = (logits + _logits(model, images.map(mirror))) / 2
    columns = list(zip(*dataset.map(lambda images, *rest: rest).as_numpy_iterator()))
    true = np.concatenate(columns[0])
    if len(columns) > 1:  # drop the pads
        real = np.concatenate(columns[1]) > 0
        true, logits = true[real], np.asarray(logits)[real]
    logits = np.asarray(logits, np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return true, probabilities.argmax(axis=1), probabilities


def mirror(images):
    """Images flipped left to right (NHWC)."""
    return images[:, :, ::-1]


def _logits(model, images):
    return np.asarray(gathered_logits(model, images) if process_count() > 1 else model.predict(images, verbose=0),
                      np.float64)


def classification_metrics(y_true, y_pred, probabilities, class_names):
    """Accuracy, loss (cross-entropy), macro precision/recall/F1, per-class report, confusion matrix."""
    from sklearn.metrics import (
        accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support,
    )

    labels = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    picked = probabilities[np.arange(len(y_true)), np.asarray(y_true, int)]
    return {
        "loss": float(-np.mean(np.log(np.maximum(picked, 1e-12)))),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "num_examples": int(len(y_true)),
        "per_class": classification_report(
            y_true, y_pred, labels=labels, target_names=[str(c) for c in class_names],
            output_dict=True, zero_division=0,
        ),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
