"""Test-split metrics: accuracy, macro precision/recall/F1, per-class report, confusion matrix."""

import numpy as np

from .devices import even_batches, gathered_logits, process_count


def predict_labels(model, dataset, test_time_flip=False):
    """(true labels, predicted labels, probabilities) over a batched (image, label) dataset.

    `test_time_flip`: the logits are the mean of the image's and its mirror image's.
    """
    true, logits, mirrored = _true_and_logits(model, dataset, test_time_flip)
    return _labelled(true, logits if mirrored is None else (logits + mirrored) / 2)


def predict_labels_with_and_without_flip(model, dataset):
    """`predict_labels` with test_time_flip and without, from one pass over each image and its mirror."""
    true, logits, mirrored = _true_and_logits(model, dataset, True)
    return _labelled(true, (logits + mirrored) / 2), _labelled(true, logits)


def _true_and_logits(model, dataset, test_time_flip):
    """True labels, logits and (with `test_time_flip`, else None) the mirror images' logits."""
    dataset = even_batches(dataset, training=False, own_part=False)  # JAX devices: padded, weights 0 for the pads
    images = dataset.map(lambda images, *rest: images)
    logits = _logits(model, images)
    mirrored = _logits(model, images.map(mirror)) if test_time_flip else None
    columns = list(zip(*dataset.map(lambda images, *rest: rest).as_numpy_iterator()))
    true = np.concatenate(columns[0])
    if len(columns) > 1:  # drop the pads
        real = np.concatenate(columns[1]) > 0
        true, logits = true[real], logits[real]
        mirrored = None if mirrored is None else mirrored[real]
    return true, logits, mirrored


def _labelled(true, logits):
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
