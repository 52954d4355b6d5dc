"""Writes `tests/data/img2dataset-pool/`: img2dataset's own output for a small sample web.

The pool tests read it as a user's img2dataset download: `00000.tar` (`<key>.jpg/.txt/.json`),
`00000.parquet` (one row per URL, failed downloads included) and `00000_stats.json`, written
by img2dataset 1.47.0 itself (`make bench-setup` installs it in `.venv-bench`). Rerun with

    .venv/bin/python tests/data/make_img2dataset_pool.py

The sample web's faults (404s, truncated and non-image bodies) give img2dataset's failure rows;
`license` is a saved additional column, as `--save_additional_columns` writes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from sampleweb import generate_corpus, serve_in_subprocess, write_url_lists  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "img2dataset-pool")
SAMPLES = 48


def main() -> int:
    exe = os.path.join(ROOT, ".venv-bench", "bin", "img2dataset")
    with tempfile.TemporaryDirectory() as tmp:
        web = os.path.join(tmp, "web")
        generate_corpus(web, samples=SAMPLES, seed=11)
        with serve_in_subprocess(web) as base_url:
            urls, _ = write_url_lists(web, base_url)
            table = pq.read_table(urls)
            licenses = [("cc-by" if i % 2 else "cc0") for i in range(table.num_rows)]
            table = table.append_column("license", pa.array(licenses))
            listed = os.path.join(tmp, "urls.parquet")
            pq.write_table(table, listed)
            folder = os.path.join(tmp, "pool")
            subprocess.run(
                [
                    exe,
                    f"--url_list={listed}",
                    "--input_format=parquet",
                    "--url_col=url",
                    "--caption_col=caption",
                    "--save_additional_columns=[license]",
                    "--output_format=webdataset",
                    f"--output_folder={folder}",
                    "--processes_count=1",
                    "--thread_count=8",
                    "--image_size=64",
                    "--resize_mode=keep_ratio",
                    "--number_sample_per_shard=1000",
                    "--distributor=multiprocessing",
                    "--timeout=5",
                    "--retries=0",
                    "--enable_wandb=False",
                ],
                check=True,
            )
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)
        for name in sorted(os.listdir(folder)):
            if name.startswith("00000"):
                shutil.copy(os.path.join(folder, name), OUT)
    print("\n".join(sorted(os.listdir(OUT))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
