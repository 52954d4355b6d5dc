"""Sizing a Winnow run: workers, hours and rough cost, from measured per-core throughputs.

    python deploy/sizing.py --pairs 100e6 --hours 24
    python deploy/sizing.py --pairs 1e9 --hours 72 --gpu-rate 2000

Each stage's work is pairs reaching it / its per-core rate. The rates are the figures in
`benchmarks/README.md` (2-core reference machine, one core's share); the GPU embedding rate was
not measured here (no GPU) and is a parameter: measure it on the target GPU with
`benchmarks/embed_throughput.py` and pass `--gpu-rate`. Prices are list prices given as
parameters; pass yours. The result is a plan to check against a pilot run, not a quote.
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


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    items: float
    rate: float  # items per second per core (or per GPU)
    on_gpu: bool = False

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
    shuffle_kb_per_pair: float = 25.0,
    shuffle_gb: float = 0.011,
) -> Plan:
    """Workers to finish in `hours`: CPU stages share the CPU pool, the embedding step has its own
    GPU workers (Dataflow right fitting); the stage with the most worker-hours bounds the run."""
    fetched = pairs * text_keep
    downloaded = fetched * crawl_success
    stages = [
        Stage("text", pairs, TEXT_PER_CORE),
        Stage("crawl", fetched, crawl_rate),
        Stage("embed", downloaded, gpu_rate, on_gpu=True),
        Stage("dedup", downloaded, DEDUP_PER_CORE),
        Stage("noise", downloaded, NOISE_PER_CORE),
    ]
    cpu_core_hours = sum(s.hours for s in stages if not s.on_gpu)
    gpu_hours = sum(s.hours for s in stages if s.on_gpu)
    cpu_workers = max(1, math.ceil(cpu_core_hours / hours / vcpus_per_worker))
    gpus = max(1, math.ceil(gpu_hours / hours))
    wall = max(cpu_core_hours / (cpu_workers * vcpus_per_worker), gpu_hours / gpus)
    cpu_cost = cpu_workers * vcpus_per_worker * wall * (vcpu_hour + gb_per_vcpu * gb_hour)
    gpu_cost = gpus * wall * (gpu_hour + gpu_worker_vcpus * (vcpu_hour + gb_per_vcpu * gb_hour))
    # Shuffled bytes: each downloaded image (256 px JPEG, ~20 KB) goes to its shard's group once;
    # the dedup and noise stages shuffle embeddings (1 KB each for a 512-d model in float16).
    shuffle_cost = downloaded * shuffle_kb_per_pair / 1e6 * shuffle_gb
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
    )
    print(f"{args.pairs:,.0f} pairs, target {args.hours:g} h")
    print(f"{'stage':<8}{'items':>16}{'per core/GPU/s':>16}{'core- or GPU-hours':>20}")
    for s in result.stages:
        print(f"{s.name:<8}{s.items:>16,.0f}{s.rate:>16,.1f}{s.hours:>20,.1f}{'  (GPU)' if s.on_gpu else ''}")
    print(
        f"plan: {result.cpu_workers} CPU workers x {args.vcpus_per_worker} vCPUs "
        f"+ {result.gpus} GPU workers, "
        f"{result.hours:.1f} h, about ${result.cost:,.0f}; bound by {result.bound}"
    )


if __name__ == "__main__":
    main()
