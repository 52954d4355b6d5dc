"""Sizing a Winnow run: workers, hours and rough cost, from measured per-core throughputs.

    python deploy/sizing.py --pairs 100e6 --hours 24
    python deploy/sizing.py --pairs 1e9 --hours 72 --gpu-rate 2000

Each stage's work is pairs reaching it / its per-core rate. The rates are the figures in
`benchmarks/README.md` (2-core reference machine, one core's share); the GPU embedding rate was
not measured here (no GPU) and is a parameter: measure it on the target GPU with
`benchmarks/embed_throughput.py` and pass `--gpu-rate`. Prices are list prices given as
parameters; pass yours. The result is a plan to check against a pilot run, not a quote.

Shuffled bytes per stage are what a run measured entering its GroupByKeys
(`benchmarks/shuffle_bytes.py`, `run.measure_shuffles`): the images cross one shuffle, at the shard
grouping, so that stage's figure is the stored image size (`--image-kb`) plus a measured overhead;
the dedup and noise stages move fingerprints, thumbnails, embeddings and light sample views. Measure
your own with a pilot run (`--set run.measure_shuffles=true`: stats under `shuffles`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

#: Per-core throughputs, items per second on one core (benchmarks/README.md, 2026-11-24).
#: The crawl measured 130 images/s per core on loopback (CPU-bound: decode and resize). On the real
#: web, latency, DNS, TLS and dead hosts bound it instead: img2dataset's LAION-5B run (5.8B images,
#: 10 nodes of 16 cores, about a week) is 60 per core, and that is the planning figure.
CRAWL_PER_CORE = 60.0
CRAWL_LOOPBACK_PER_CORE = 130.0
TEXT_PER_CORE = 70_000.0  # FilterText, datacomp_basic preset, one process
DEDUP_PER_CORE = 4_300.0  # semantic level, 8,644 embeddings/s on 2 cores at 1M embeddings
NOISE_PER_CORE = 2_150.0  # two neighbour searches of the dedup's kind per pair: half the dedup rate
CPU_EMBED_PER_CORE = 4.75  # ViT-B-32 on CPU: 9.5 images/s on 2 cores

#: Bytes shuffled per pair reaching the stage, measured by `benchmarks/shuffle_bytes.py --samples
#: 1000` (2026-12-05; default config, the shipped 128-d model; 825 of 1,000 pairs downloaded).
#: Dedup's figure depends on how many pairs share a perceptual-hash band: the sample web's drawn
#: shapes make many such candidates, photographs fewer. A wider model than the shipped 128-d one
#: adds its embedding bytes at each join of dedup and noise: measure a pilot run.
SHUFFLE_READ_TEXT = 279.0  # per input pair: row batches spread, URL and caption counts
SHUFFLE_DEDUP = 16_463.0  # per downloaded pair: fingerprints through the levels, LSH, groups
SHUFFLE_NOISE = 10_697.0  # per downloaded pair: light views, neighbour searches, the joins
SHUFFLE_WRITE_OVERHEAD = 2_700.0  # per downloaded pair at the shard grouping, besides the image
STORED_IMAGE_KB = 15.0  # the sample web's stored images (256 px); pass your own with --image-kb


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    items: float
    rate: float  # items per second per core (or per GPU); inf: no compute worth counting
    on_gpu: bool = False
    shuffle_bytes: float = 0.0

    @property
    def hours(self) -> float:
        """Core-hours (GPU-hours for a GPU stage)."""
        return self.items / self.rate / 3600


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: list[Stage]
    cpu_workers: int
    gpus: int
    hours: float
    cost: float
    bound: str


def plan(
    pairs: float,
    hours: float,
    *,
    text_keep: float = 0.92,
    crawl_success: float = 0.55,
    crawl_rate: float = CRAWL_PER_CORE,
    gpu_rate: float = 2_000.0,
    vcpus_per_worker: int = 16,
    gb_per_vcpu: float = 3.75,
    vcpu_hour: float = 0.056,
    gb_hour: float = 0.003557,
    gpu_hour: float = 0.60,
    gpu_worker_vcpus: int = 8,
    image_kb: float = STORED_IMAGE_KB,
    shuffle_gb: float = 0.011,
) -> Plan:
    """Workers to finish in `hours`: CPU stages share the CPU pool, the embedding step has its own
    GPU workers (Dataflow right fitting); the stage with the most worker-hours bounds the run."""
    fetched = pairs * text_keep
    downloaded = fetched * crawl_success
    stages = [
        Stage("text", pairs, TEXT_PER_CORE, shuffle_bytes=pairs * SHUFFLE_READ_TEXT),
        Stage("crawl", fetched, crawl_rate),
        Stage("embed", downloaded, gpu_rate, on_gpu=True),
        Stage("dedup", downloaded, DEDUP_PER_CORE, shuffle_bytes=downloaded * SHUFFLE_DEDUP),
        Stage("noise", downloaded, NOISE_PER_CORE, shuffle_bytes=downloaded * SHUFFLE_NOISE),
        Stage(
            "write",
            downloaded,
            math.inf,
            shuffle_bytes=downloaded * (SHUFFLE_WRITE_OVERHEAD + image_kb * 1000),
        ),
    ]
    cpu_core_hours = sum(s.hours for s in stages if not s.on_gpu)
    gpu_hours = sum(s.hours for s in stages if s.on_gpu)
    cpu_workers = max(1, math.ceil(cpu_core_hours / hours / vcpus_per_worker))
    gpus = max(1, math.ceil(gpu_hours / hours))
    wall = max(cpu_core_hours / (cpu_workers * vcpus_per_worker), gpu_hours / gpus)
    cpu_cost = cpu_workers * vcpus_per_worker * wall * (vcpu_hour + gb_per_vcpu * gb_hour)
    gpu_cost = gpus * wall * (gpu_hour + gpu_worker_vcpus * (vcpu_hour + gb_per_vcpu * gb_hour))
    shuffle_cost = sum(s.shuffle_bytes for s in stages) / 1e9 * shuffle_gb
    cpu_wall = cpu_core_hours / (cpu_workers * vcpus_per_worker)
    if gpu_hours / gpus >= cpu_wall:
        bound = "embed (GPU)"
    else:
        bound = max((s for s in stages if not s.on_gpu), key=lambda s: s.hours).name
    return Plan(stages, cpu_workers, gpus, wall, cpu_cost + gpu_cost + shuffle_cost, bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=float, required=True, help="pairs in the URL lists")
    parser.add_argument("--hours", type=float, default=24.0, help="wall-clock target")
    parser.add_argument(
        "--crawl-success", type=float, default=0.55, help="share of fetched URLs that download"
    )
    parser.add_argument("--crawl-rate", type=float, default=CRAWL_PER_CORE, help="images/s per core")
    parser.add_argument(
        "--gpu-rate", type=float, default=2_000.0, help="embedded images/s per GPU (measure it)"
    )
    parser.add_argument("--image-kb", type=float, default=STORED_IMAGE_KB, help="stored image size")
    parser.add_argument("--vcpus-per-worker", type=int, default=16)
    parser.add_argument("--vcpu-hour", type=float, default=0.056, help="price of a vCPU-hour")
    parser.add_argument("--gpu-hour", type=float, default=0.60, help="price of a GPU-hour")
    args = parser.parse_args()
    result = plan(
        args.pairs,
        args.hours,
        crawl_success=args.crawl_success,
        crawl_rate=args.crawl_rate,
        gpu_rate=args.gpu_rate,
        vcpus_per_worker=args.vcpus_per_worker,
        vcpu_hour=args.vcpu_hour,
        gpu_hour=args.gpu_hour,
        image_kb=args.image_kb,
    )
    print(f"{args.pairs:,.0f} pairs, target {args.hours:g} h")
    print(f"{'stage':<8}{'items':>16}{'per core/GPU/s':>16}{'core- or GPU-hours':>20}{'shuffled TB':>13}")
    for s in result.stages:
        rate = f"{s.rate:>16,.1f}" if math.isfinite(s.rate) else f"{'-':>16}"
        print(
            f"{s.name:<8}{s.items:>16,.0f}{rate}{s.hours:>20,.1f}{s.shuffle_bytes / 1e12:>13,.2f}"
            f"{'  (GPU)' if s.on_gpu else ''}"
        )
    heaviest = max(result.stages, key=lambda s: s.shuffle_bytes)
    total = sum(s.shuffle_bytes for s in result.stages)
    share = heaviest.shuffle_bytes / total
    print(f"shuffled: {total / 1e12:,.2f} TB in all, most by {heaviest.name} ({share:.0%})")
    print(
        f"plan: {result.cpu_workers} CPU workers x {args.vcpus_per_worker} vCPUs "
        f"+ {result.gpus} GPU workers, "
        f"{result.hours:.1f} h, about ${result.cost:,.0f}; bound by {result.bound}"
    )


if __name__ == "__main__":
    main()
