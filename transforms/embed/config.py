"""The `embed` section: which CLIP model, on what device, and the decision on its score."""

from __future__ import annotations

import dataclasses
from typing import Literal

from transforms.common.checks import Check

#: The small model Winnow ships (trained on the sample web by `models/train_tiny_clip.py`).
SHIPPED_MODEL = "winnow-tiny-clip"


class EmbedError(RuntimeError):
    """The embedding model cannot be loaded or run as configured (the message says why)."""


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """The `embed` section."""

    #: open_clip model: a built-in name (ViT-B-32, ViT-L-14, …), `winnow-tiny-clip` (shipped), or a
    #: folder (local, s3://, gs://) holding `open_clip_config.json` and the weights.
    model: str = SHIPPED_MODEL
    #: For a built-in name: an open_clip pretrained tag (openai, laion2b_s34b_b79k, …) or a
    #: checkpoint file (local, s3://, gs://); empty = random weights (throughput tests only).
    pretrained: str = ""
    #: auto (CUDA when present), cpu or cuda (an error when CUDA is not usable).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: auto = fp16 on CUDA, fp32 on CPU.
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    #: Images per model call.
    batch_size: int = 64
    #: One model per machine, shared by its worker processes (for big models).
    large_model: bool = False
    #: Exact number of model copies per machine (0 = one per process, or one with large_model).
    model_copies: int = 0
    #: Reject samples whose clip_score is below this (LAION: 0.28 with ViT-B/32); null = off.
    min_clip_score: float | None = None
    #: Keep only this top fraction of the run by clip_score (DataComp: 0.3; its exact rule, over
    #: every score of the run); null = off.
    keep_fraction: float | None = None
    #: A pool whose shards carry this model's embeddings (DataComp's `.npz`, Winnow's `img_emb/`)
    #: has them reused, and a pool carrying only another model's is an error; true computes them
    #: again with this model instead.
    recompute: bool = False
    #: Carry the embeddings to the writer (img_emb/, text_emb/); false keeps only the score.
    write_embeddings: bool = True
    #: Accelerator resource hint of the embedding step alone, in Dataflow's form
    #: (`type:nvidia-l4;count:1;install-nvidia-driver`): with right fitting only this step runs on
    #: GPU workers, the crawl and text steps on CPU ones. null = no hint.
    accelerator: str | None = None

    def __post_init__(self) -> None:
        check = Check("embed", self)
        check.not_empty("model")
        check.at_least(1, "batch_size")
        check.at_least(0, "model_copies")
        check.between(-1, 1, "min_clip_score")  # a cosine
        if self.accelerator is not None and not self.accelerator.startswith("type:"):
            raise ValueError(
                "embed.accelerator must be a resource hint such as "
                f"'type:nvidia-l4;count:1;install-nvidia-driver', not {self.accelerator!r}"
            )
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ValueError(f"embed.keep_fraction ({self.keep_fraction!r}) must be in (0, 1]")
