"""The safety stage: known-bad blocklists, NSFW scores and faces.

- `stage.py`: `ScreenUrls` (the URL list, before the crawl fetches) and `CheckSafety` (digests,
  PDQ, faces and NSFW scores, right after the crawl).
- `probe.py`: `SafetyProbe`, what the crawl measures for this stage while it holds the pixels.
- `blocklists.py`: the URL, digest and PDQ lists; `hashindex.py`: PDQ hashes found within a
  Hamming distance without scanning the list (multi-index hashing); `pdq.py`: Meta's PDQ hash.
- `faces.py`: face detection (OpenCV) and img2dataset's blurring; `nsfw.py`: the Open-NSFW
  classifier through `RunInference`; `head.py`: a CLIP head over the embed stage's vectors
  (`ScoreNsfwFromEmbeddings`, after the embed stage).
- `config.py`: the `safety` section.

The config is imported at once, the transforms when first asked for (`common/exports.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transforms.common.exports import lazy_exports
from transforms.safety.config import SafetyConfig

if TYPE_CHECKING:
    from transforms.safety.blocklists import BlocklistError, read_blocklists
    from transforms.safety.hashindex import HammingIndex, read_hash_list
    from transforms.safety.pdq import PdqHash, pdq_hash
    from transforms.safety.probe import SafetyProbe
    from transforms.safety.stage import CheckSafety, ScoreNsfwFromEmbeddings, ScreenUrls

__all__ = [
    "BlocklistError",
    "CheckSafety",
    "HammingIndex",
    "PdqHash",
    "SafetyConfig",
    "SafetyProbe",
    "ScoreNsfwFromEmbeddings",
    "ScreenUrls",
    "pdq_hash",
    "read_blocklists",
    "read_hash_list",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "BlocklistError": "blocklists",
        "read_blocklists": "blocklists",
        "HammingIndex": "hashindex",
        "read_hash_list": "hashindex",
        "PdqHash": "pdq",
        "pdq_hash": "pdq",
        "SafetyProbe": "probe",
        "CheckSafety": "stage",
        "ScreenUrls": "stage",
        "ScoreNsfwFromEmbeddings": "stage",
    },
)
