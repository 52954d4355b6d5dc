"""A DataComp-shaped pool from a generated sample web: what img2dataset leaves after downloading
DataComp's CommonPool, with the columns and arrays DataComp ships.

Per shard `NNNNNNNN.tar` (`<key>.<ext>`, `<key>.txt`, `<key>.json` for each downloaded sample),
`NNNNNNNN.parquet` (one row per sample: `uid`, `key`, `url`, `text`, `original_width`,
`original_height`, `sha256`, `clip_b32_similarity_score`, `clip_l14_similarity_score`,
`face_bboxes`, `status`, `error_message`) and `NNNNNNNN.npz` (`b32_img`, `b32_txt`, `l14_img`,
`l14_txt`, float16, row-aligned with the Parquet).

What DataComp's rules read is drawn to cross their thresholds: original sizes around 200 px and
aspect ratios around 3 (the stored image keeps its own size, as a resized pool's does), captions
in several languages and lengths, and scores with ties. The embeddings are random unit vectors
whose cosine is near the recorded score (DataComp scored in float32 before storing float16).

    python -m sampleweb.pool WEB_DIR OUT_DIR --shards 2 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from sampleweb.corpus import FILES_DIR, MANIFEST_NAME
from sampleweb.layout import file_name

#: Embedding widths of OpenAI's CLIP ViT-B/32 and ViT-L/14.
WIDTHS = {"b32": 512, "l14": 768}
#: Share of samples img2dataset failed to download (rows without an image in the tar).
FAILED_SHARE = 0.05

SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("clip_b32_similarity_score", pa.float32()),
        ("clip_l14_similarity_score", pa.float32()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


def _pair(rng: np.random.Generator, score: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (image, text) whose cosine is `score`."""
    image = rng.standard_normal(width)
    image /= np.linalg.norm(image)
    other = rng.standard_normal(width)
    other -= other.dot(image) * image
    other /= np.linalg.norm(other)
    text = score * image + np.sqrt(max(0.0, 1 - score * score)) * other
    return image.astype(np.float16), text.astype(np.float16)


def _original_size(rng: np.random.Generator) -> tuple[int, int]:
    """An original size near DataComp's image rules: shorter side near 200, ratio near 3."""
    short = int(rng.choice([120, 199, 200, 201, 256, 400, 640]))
    ratio = float(rng.choice([1.0, 1.5, 2.99, 3.0, 3.01, 4.0]))
    long = int(round(short * ratio))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _stored(data: bytes, max_side: int | None) -> bytes:
    """The image as the pool stores it: its longer side cut to `max_side` (img2dataset's
    `keep_ratio_largest`), in its own format; None keeps the bytes."""
    if max_side is None:
        return data
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= max_side:
            return data
        fmt = image.format
        image.thumbnail((max_side, max_side))
        out = io.BytesIO()
        image.save(out, format=fmt)
        return out.getvalue()


def write_datacomp_pool(
    web_dir: str, out_dir: str, shards: int = 2, seed: int = 0, max_side: int | None = 256
) -> dict[str, int]:
    """Writes the pool of the sample web's fetchable samples into `out_dir`; returns counts.
    `max_side` resizes the stored images as a downloader would (None: the sample web's own)."""
    manifest = pq.read_table(os.path.join(web_dir, MANIFEST_NAME)).to_pylist()
    rows = [r for r in manifest if r["fault"] is None]
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    counts = {"samples": 0, "downloaded": 0}
    per_shard = -(-len(rows) // shards)
    # A few scores repeat exactly: the top-fraction rule keeps every sample tied at the threshold.
    ties = rng.uniform(0.15, 0.35, size=8).astype(np.float32)
    for shard in range(shards):
        stem = f"{shard:08d}"
        table_rows: list[dict[str, Any]] = []
        arrays: dict[str, list[np.ndarray]] = {f"{m}_{t}": [] for m in WIDTHS for t in ("img", "txt")}
        with tarfile.open(os.path.join(out_dir, f"{stem}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, row in enumerate(rows[shard * per_shard : (shard + 1) * per_shard]):
                key = f"{shard:04d}{i:05d}"
                uid = f"{int(rng.integers(0, 2**63)):016x}{int(rng.integers(0, 2**63)):016x}"
                width, height = _original_size(rng)
                scores = {
                    m: float(ties[rng.integers(len(ties))])
                    if rng.random() < 0.1
                    else float(np.float32(rng.uniform(0.05, 0.45)))
                    for m in WIDTHS
                }
                failed = rng.random() < FAILED_SHARE
                path = os.path.join(web_dir, FILES_DIR, file_name(row["id"], row["format"]))
                data = b"" if failed else _stored(Path(path).read_bytes(), max_side)
                record = {
                    "uid": uid,
                    "key": key,
                    "url": f"http://pool.example/{file_name(row['id'], row['format'])}",
                    "text": row["caption"] or "",
                    "original_width": width,
                    "original_height": height,
                    "sha256": None if failed else hashlib.sha256(data).hexdigest(),
                    "clip_b32_similarity_score": scores["b32"],
                    "clip_l14_similarity_score": scores["l14"],
                    "face_bboxes": [[0.1, 0.2, 0.3, 0.4]] if rng.random() < 0.1 else [],
                    "status": "failed_to_download" if failed else "success",
                    "error_message": "HTTP Error 404: Not Found" if failed else None,
                }
                for model, width_ in WIDTHS.items():
                    image, text = _pair(rng, scores[model], width_)
                    arrays[f"{model}_img"].append(image)
                    arrays[f"{model}_txt"].append(text)
                table_rows.append(record)
                counts["samples"] += 1
                if failed:
                    continue
                counts["downloaded"] += 1
                ext = file_name(row["id"], row["format"]).rsplit(".", 1)[1]
                meta = {
                    k: record[k] for k in ("uid", "key", "url", "original_width", "original_height", "status")
                }
                meta["caption"] = row["caption"]
                for name, payload in (
                    (f"{key}.{ext}", data),
                    (f"{key}.txt", (row["caption"] or "").encode()),
                    (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
        pq.write_table(
            pa.Table.from_pylist(table_rows, schema=SCHEMA), os.path.join(out_dir, f"{stem}.parquet")
        )
        np.savez(os.path.join(out_dir, f"{stem}.npz"), **{k: np.stack(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return counts


def write_clip_retrieval_output(
    pool_dir: str, out_dir: str, width: int = 512, partitions: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """What `clip-retrieval inference --input_format webdataset --enable_metadata True` writes for
    the pool's tars (its `writer.py`): per partition N, `img_emb/img_emb_N.npy` and
    `text_emb/text_emb_N.npy` (float16, L2-normalised) and `metadata/metadata_N.parquet`
    (`image_path` = the WebDataset key, `caption`, then the `.json` fields), rows aligned. Samples
    without a `.jpg` or `.txt` are skipped, as clip-retrieval's reader skips them. Random unit
    vectors stand in for a model's. Returns key → (image, text) embeddings."""
    rows: list[dict[str, Any]] = []
    for name in sorted(os.listdir(pool_dir)):
        if not name.endswith(".tar"):
            continue
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(os.path.join(pool_dir, name)) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                extracted = tar.extractfile(member)
                if extracted is not None:
                    members.setdefault(key, {})[ext] = extracted.read()
        for key, parts in members.items():
            if "jpg" in parts and "txt" in parts:
                metadata = json.loads(parts.get("json", b"{}"))
                extra = {k: v for k, v in metadata.items() if k not in ("caption", "image_path")}
                rows.append({"image_path": key, "caption": parts["txt"].decode(), **extra})
    rng = np.random.default_rng(seed)
    vectors = {}
    for row in rows:
        pair = rng.standard_normal((2, width))
        vectors[row["image_path"]] = (pair / np.linalg.norm(pair, axis=1, keepdims=True)).astype(np.float16)
    digits = len(str(partitions))
    per = -(-len(rows) // partitions)
    for folder in ("img_emb", "text_emb", "metadata"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    for part in range(partitions):
        chunk = rows[part * per : (part + 1) * per]
        number = str(part).zfill(digits)
        keys = [row["image_path"] for row in chunk]
        np.save(
            os.path.join(out_dir, "img_emb", f"img_emb_{number}.npy"), np.stack([vectors[k][0] for k in keys])
        )
        np.save(
            os.path.join(out_dir, "text_emb", f"text_emb_{number}.npy"),
            np.stack([vectors[k][1] for k in keys]),
        )
        pq.write_table(
            pa.Table.from_pylist(chunk), os.path.join(out_dir, "metadata", f"metadata_{number}.parquet")
        )
    return vectors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a DataComp-shaped pool from a sample web.")
    parser.add_argument("web_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=256, help="0 keeps the sample web's images")
    args = parser.parse_args(argv)
    counts = write_datacomp_pool(args.web_dir, args.out_dir, args.shards, args.seed, args.max_side or None)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
