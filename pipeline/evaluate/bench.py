"""Scoring a trained checkpoint with clip_benchmark on eval sets in its WebDataset layout.

Contract:

* An eval set is a folder in clip_benchmark's WebDataset layout (``test/nshards.txt``,
  ``test/0.tar`` …, ``dataset_type.txt``; ``classnames.txt`` and
  ``zeroshot_classification_templates.txt`` for a classification), as ``winnow corpus`` writes under
  ``<out>/eval`` and as DataComp's 38 evaluation sets are published.  :func:`find_eval_sets` takes
  the folder given and its direct sub-folders that hold such a set.
* The datasets are loaded by ``clip_benchmark.datasets.builder.build_dataset("wds/<name>")`` and
  preprocessed once per evaluation (:class:`EvalData`) and scored by clip_benchmark's own code:
  the classifier from the templates and class names
  (``zero_shot_classifier``), the logits (``run_classification``) and the retrieval recall
  (``zeroshot_retrieval.evaluate``), with the checkpoint loaded through open_clip and the
  preprocessing it was trained with.
* Metric names: ``zeroshot_acc`` (top-1 accuracy, the mean over the classification sets, as
  DataComp averages its tasks), ``zeroshot_acc5``, ``retrieval_r5`` (mean of image and text retrieval
  recall@5 over the retrieval sets), ``image_r5``, ``text_r5``; and the same per set, prefixed
  ``<set name>/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EvalSet:
    """One clip_benchmark WebDataset folder."""

    name: str
    root: str
    kind: str  # classification | retrieval


def find_eval_sets(folder: str) -> list[EvalSet]:
    """The eval sets in ``folder`` and its direct sub-folders; ``ValueError`` when there is none."""
    candidates = [folder] + sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))
    )
    found = []
    for root in candidates:
        if not os.path.exists(os.path.join(root, "test", "nshards.txt")):
            continue
        kind_path = os.path.join(root, "dataset_type.txt")
        kind = "classification"  # clip_benchmark's default when the file is missing
        if os.path.exists(kind_path):
            with open(kind_path, encoding="utf-8") as handle:
                kind = handle.read().strip().lower()
        if kind not in ("classification", "retrieval"):
            raise ValueError(f"--eval: {kind_path} says {kind!r}; expected classification or retrieval")
        if kind == "classification" and not os.path.exists(os.path.join(root, "classnames.txt")):
            raise ValueError(f"--eval: {root} is a classification set without classnames.txt")
        name = os.path.basename(os.path.normpath(root))
        name = "concepts" if root == folder and name == "eval" else name
        found.append(EvalSet(name=name, root=root, kind=kind))
    if not found:
        raise ValueError(f"--eval: {folder} holds no eval set in clip_benchmark's layout (test/nshards.txt)")
    return found


@dataclass(frozen=True)
class LoadedSet:
    """An eval set read by clip_benchmark: its batches, preprocessed (kept in memory when they fit
    the cache, else read again for each checkpoint)."""

    eval_set: EvalSet
    classes: list[str] | None
    templates: list[str] | None
    batches: Callable[[], Iterable[tuple[Any, Any]]]


class EvalData:
    """The eval sets of one evaluation.  Every checkpoint has the same architecture and so the same
    preprocessing: a set whose preprocessed images fit ``cache_bytes`` is decoded and resized once
    and kept, not once per checkpoint."""

    def __init__(self, sets: Sequence[EvalSet], batch_size: int = 256, cache_bytes: int = 1 << 30):
        self.sets = list(sets)
        self._batch_size = batch_size
        self._cache_bytes = cache_bytes
        self._loaded: dict[str, list[LoadedSet]] = {}

    def loaded(self, preprocess: Any) -> list[LoadedSet]:
        key = repr(preprocess)  # torchvision transforms print their parameters
        if key not in self._loaded:
            self._loaded[key] = [self._load(eval_set, preprocess) for eval_set in self.sets]
        return self._loaded[key]

    def _load(self, eval_set: EvalSet, preprocess: Any) -> LoadedSet:
        import torch
        from clip_benchmark.datasets.builder import build_dataset

        task = "zeroshot_classification" if eval_set.kind == "classification" else "zeroshot_retrieval"
        dataset = build_dataset(
            f"wds/{eval_set.name}", root=eval_set.root, transform=preprocess, split="test", task=task
        )

        def read() -> Iterable[tuple[Any, Any]]:
            # as clip_benchmark's CLI loads a wds/ set: its own batches, no further collation
            return torch.utils.data.DataLoader(dataset.batched(self._batch_size), batch_size=None)

        kept: list[tuple[Any, Any]] = []
        size = 0
        for images, labels in read():
            size += images.element_size() * images.nelement()
            if size > self._cache_bytes:
                return LoadedSet(eval_set, dataset.classes, dataset.templates, read)
            kept.append((images, labels))
        return LoadedSet(eval_set, dataset.classes, dataset.templates, lambda: kept)


def score_checkpoint(model_name: str, checkpoint: str, data: EvalData) -> dict[str, float]:
    """clip_benchmark's metrics of ``checkpoint`` on the eval sets of ``data`` (the names above)."""
    import open_clip
    import torch
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=checkpoint, device=device
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    metrics: dict[str, float] = {}
    for loaded in data.loaded(preprocess):
        name = loaded.eval_set.name
        if loaded.eval_set.kind == "classification":
            classifier = zeroshot_classification.zero_shot_classifier(
                model, tokenizer, loaded.classes, loaded.templates, device, amp=False
            )
            logits, target = zeroshot_classification.run_classification(
                model, classifier, loaded.batches(), device, amp=False
            )
            acc1, acc5 = top_k_accuracy(logits, target, (1, 5))
            metrics[f"{name}/zeroshot_acc"] = acc1
            metrics[f"{name}/zeroshot_acc5"] = acc5
        else:
            found = zeroshot_retrieval.evaluate(
                model, loaded.batches(), tokenizer, device, amp=False, recall_k_list=[5]
            )
            metrics[f"{name}/image_r5"] = float(found["image_retrieval_recall@5"])
            metrics[f"{name}/text_r5"] = float(found["text_retrieval_recall@5"])
    return {**headline(metrics, data.sets), **metrics}


def top_k_accuracy(logits, target, topk: Sequence[int]) -> list[float]:
    """Share of images whose class is among the k highest logits: clip_benchmark's ``accuracy``,
    whose last step (``float`` of a one-element array) NumPy 2.4 refuses."""
    ranked = logits.topk(max(topk), 1, True, True)[1].t()
    correct = ranked.eq(target.view(1, -1).expand_as(ranked))
    return [float(correct[:k].sum().item()) / len(target) for k in topk]


def headline(metrics: dict[str, float], sets: Sequence[EvalSet]) -> dict[str, float]:
    """The headline metrics: means over the sets of each kind."""

    def mean(kind: str, metric: str) -> float | None:
        values = [metrics[f"{s.name}/{metric}"] for s in sets if s.kind == kind]
        return float(np.mean(values)) if values else None

    found = {
        "zeroshot_acc": mean("classification", "zeroshot_acc"),
        "zeroshot_acc5": mean("classification", "zeroshot_acc5"),
        "image_r5": mean("retrieval", "image_r5"),
        "text_r5": mean("retrieval", "text_r5"),
    }
    if found["image_r5"] is not None and found["text_r5"] is not None:
        found["retrieval_r5"] = (found["image_r5"] + found["text_r5"]) / 2
    return {name: value for name, value in found.items() if value is not None}
