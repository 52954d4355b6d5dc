"""Sizing a Winnow run from measured per-sample figures: core-hours per stage, shuffled TB, worker
memory and a rough cost.

    python deploy/sizing.py --pairs 1e9 --hours 72
    python deploy/sizing.py --pairs 1e9 --measured my_pilot.json --gpu-rate 2000

The figures come from `benchmarks/scale.py --json` (`deploy/scale_measured.json` by default): the
whole default run on a pool of hard data (skewed perceptual hashes, heavy-tailed duplicate
groups) at its largest size, per sample read:

- each stage's execution milliseconds (the runner's own `ptransform_execution_time`, summed over
  the stage's steps and workers), and the CPU the run took beyond them (runner overhead, the
  index and the report), spread over the samples;
- the bytes entering each stage's shuffles (`run.measure_shuffles`);
- the largest worker process's peak RSS, which does not grow with n (the benchmark checks it).

A stage's core-hours are its items × milliseconds per sample. Two stages are not taken from the
benchmark: the crawl's fetch (the benchmark reads a pool, which decodes and resizes as the crawl
does but fetches nothing; the real web is bound by latency, DNS, TLS and dead hosts, planned at
`--crawl-rate` images/s per core, img2dataset's LAION-5B rate) and the embedding (on GPUs at
`--gpu-rate`, a parameter: measure it with `benchmarks/embed_throughput.py` on the target GPU).

No figure rests on an extrapolation across the k-means cap: k grows with n (a coarse k-means on
the sample, then a fine one per oversized cell on the workers, `transforms/common/partition.py`),
so semantic clusters and noise neighbourhoods stay near `dedup.cluster_size` at any n and the
per-sample work measured at the benchmark's largest size holds at 10^9; the perceptual level
compares inside bounded blocks. The benchmark checks that per-sample work and bytes stay flat
between its two sizes, and the worker's peak memory within 1.5x; the plan prints the memory's
measured growth, and a measured file that grew past either bound is refused with `--strict`.
Prices are list prices given as parameters. The result is a plan to check against a pilot run,
not a quote.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

MEASURED = Path(__file__).resolve().parent / "scale_measured.json"
#: Images/s per core of the crawl on the real web (img2dataset's LAION-5B run: 5.8B images, 10
#: nodes of 16 cores, about a week).
CRAWL_PER_CORE = 60.0
#: The stages the plan lists, in the order data flows.
STAGES = ("read", "text", "crawl", "safety", "embed", "dedup", "noise", "write", "other")
#: Which count a stage's work grows with: every input pair, fetched pairs, or downloaded ones.
_INPUT, _FETCHED, _DOWNLOADED = "input", "fetched", "downloaded"
_ITEMS = {
    "read": _INPUT,
    "text": _INPUT,
    "crawl": _FETCHED,
    "safety": _DOWNLOADED,
    "embed": _DOWNLOADED,
    "dedup": _DOWNLOADED,
    "noise": _DOWNLOADED,
    "write": _DOWNLOADED,
    "other": _DOWNLOADED,
}
#: Growth bound of per-sample figures between the benchmark's two sizes (its own bound).
FLAT = 1.2
#: Growth bound of the largest worker's peak RSS between the two sizes (the benchmark's own).
MEMORY_FLAT = 1.5


class MeasuredError(ValueError):
    """The measured figures are missing, malformed or not flat (the message says which)."""


@dataclasses.dataclass(frozen=True)
class Measured:
    """Per-sample figures of one benchmark size."""

    size: int
    ms_per_sample: dict[str, float]  # CPU milliseconds per sample, by stage
    shuffle_bytes_per_sample: dict[str, float]
    worker_rss_mb: float
    comparisons_per_sample: float
    source: str
    #: The worker RSS of the largest size over the smallest's, and those sizes (None: one size).
    rss_growth: tuple[float, int, int] | None = None

    @classmethod
    def load(cls, path: str | Path, strict: bool = False) -> Measured:
        """The largest size of a `benchmarks/scale.py --json` file."""
        try:
            document = json.loads(Path(path).read_text())
            sizes = sorted(document["sizes"], key=lambda row: row["size"])
            top = sizes[-1]
            steps = {k: float(v) for k, v in top["step_ms_per_sample_by_stage"].items()}
            shuffles = {k: float(v) for k, v in top["shuffle_bytes_per_sample_by_stage"].items()}
            cpu_ms = 1000.0 * float(top["cpu_s"]) / top["size"]
            rss, comparisons = float(top["peak_rss_mb"]), float(top["comparisons_per_sample"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as why:
            raise MeasuredError(f"{path}: not a benchmarks/scale.py --json file ({why})") from why
        if strict and len(sizes) >= 2:
            low = sizes[0]
            for field in ("comparisons_per_sample", "shuffle_bytes_per_sample"):
                if low[field] and top[field] / low[field] > FLAT:
                    raise MeasuredError(
                        f"{path}: {field} grew {top[field] / low[field]:.2f}x from {low['size']:,} to "
                        f"{top['size']:,} pairs (more than {FLAT}x): it cannot be extrapolated"
                    )
            if low["peak_rss_mb"] and top["peak_rss_mb"] / low["peak_rss_mb"] > MEMORY_FLAT:
                raise MeasuredError(
                    f"{path}: the largest worker's peak RSS grew "
                    f"{top['peak_rss_mb'] / low['peak_rss_mb']:.2f}x "
                    f"from {low['size']:,} to {top['size']:,} pairs (more than {MEMORY_FLAT}x): "
                    "it cannot be extrapolated"
                )
        steps = {stage: steps.get(stage, 0.0) for stage in STAGES if stage != "other"}
        steps["other"] = max(0.0, cpu_ms - sum(steps.values()))  # runner, index, report
        growth = None
        if len(sizes) >= 2 and sizes[0]["peak_rss_mb"]:
            growth = (rss / float(sizes[0]["peak_rss_mb"]), int(sizes[0]["size"]), int(top["size"]))
        return cls(int(top["size"]), steps, shuffles, rss, comparisons, str(path), growth)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    items: float
    core_hours: float  # GPU-hours for a GPU stage
    shuffle_bytes: float
    on_gpu: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: list[Stage]
    cpu_workers: int
    gpus: int
    hours: float
    worker_memory_gb: float  # per CPU worker
    cost: float
    bound: str


@dataclasses.dataclass(frozen=True)
class Prices:
    """Dataflow batch list prices (us-central1); pass your own."""

    vcpu_hour: float = 0.056
    gb_hour: float = 0.003557
    gpu_hour: float = 0.60  # an L4
    gpu_worker_vcpus: int = 8
    shuffle_gb: float = 0.011


def plan(
    pairs: float,
    hours: float,
    measured: Measured,
    *,
    text_keep: float = 0.92,
    crawl_success: float = 0.55,
    crawl_rate: float = CRAWL_PER_CORE,
    gpu_rate: float = 2_000.0,
    vcpus_per_worker: int = 16,
    prices: Prices = Prices(),
) -> Plan:
    """Workers to finish in `hours`: CPU stages share the CPU pool, the embedding has its own GPU
    workers; a CPU worker's memory is one worker process's measured peak per vCPU (the Python
    SDK runs one process per vCPU) with 25 % headroom."""
    counts = {_INPUT: pairs, _FETCHED: pairs * text_keep, _DOWNLOADED: pairs * text_keep * crawl_success}
    stages = []
    for name in STAGES:
        items = counts[_ITEMS[name]]
        if name == "embed":
            work, on_gpu = items / gpu_rate / 3600, True
        else:
            work, on_gpu = items * measured.ms_per_sample[name] / 1000 / 3600, False
            if name == "crawl":  # the fetch, which a pool skips, on top of the measured decoding
                work += items / crawl_rate / 3600
        shuffled = items * measured.shuffle_bytes_per_sample.get(name, 0.0)
        stages.append(Stage(name, items, work, shuffled, on_gpu))
    cpu_hours = sum(s.core_hours for s in stages if not s.on_gpu)
    gpu_hours = sum(s.core_hours for s in stages if s.on_gpu)
    cpu_workers = max(1, math.ceil(cpu_hours / hours / vcpus_per_worker))
    gpus = max(1, math.ceil(gpu_hours / hours))
    wall = max(cpu_hours / (cpu_workers * vcpus_per_worker), gpu_hours / gpus)
    memory_gb = math.ceil(1.25 * measured.worker_rss_mb * vcpus_per_worker / 1024)
    gb_per_vcpu = memory_gb / vcpus_per_worker
    vcpu_price = prices.vcpu_hour + gb_per_vcpu * prices.gb_hour
    cpu_cost = cpu_workers * vcpus_per_worker * wall * vcpu_price
    gpu_cost = gpus * wall * (prices.gpu_hour + prices.gpu_worker_vcpus * vcpu_price)
    shuffle_cost = sum(s.shuffle_bytes for s in stages) / 1e9 * prices.shuffle_gb
    if gpu_hours / gpus >= cpu_hours / (cpu_workers * vcpus_per_worker):
        bound = "embed (GPU)"
    else:
        bound = max((s for s in stages if not s.on_gpu), key=lambda s: s.core_hours).name
    return Plan(stages, cpu_workers, gpus, wall, memory_gb, cpu_cost + gpu_cost + shuffle_cost, bound)


def report(pairs: float, hours: float, result: Plan, measured: Measured, vcpus: int) -> list[str]:
    """The plan's lines, as `main` prints them."""
    lines = [
        f"{pairs:,.0f} pairs, target {hours:g} h; per-sample figures of {measured.size:,} pairs "
        f"({Path(measured.source).name})",
        f"{'stage':<8}{'items':>16}{'core- or GPU-hours':>20}{'shuffled TB':>13}",
    ]
    for s in result.stages:
        lines.append(
            f"{s.name:<8}{s.items:>16,.0f}{s.core_hours:>20,.1f}{s.shuffle_bytes / 1e12:>13,.2f}"
            f"{'  (GPU)' if s.on_gpu else ''}"
        )
    total = sum(s.shuffle_bytes for s in result.stages)
    cpu = sum(s.core_hours for s in result.stages if not s.on_gpu)
    lines.append(f"total: {cpu:,.1f} CPU core-hours, {total / 1e12:,.2f} TB shuffled")
    if measured.rss_growth is None:
        growth = "measured at one size only"
    else:
        ratio, low, high = measured.rss_growth
        growth = f"{ratio:.2f}x the peak at {low:,} pairs for {high / low:.3g}x the pairs"
    lines.append(
        f"worker memory: {measured.worker_rss_mb:,.0f} MB per worker process (measured peak at "
        f"{measured.size:,} pairs, {growth}), {result.worker_memory_gb} GB per {vcpus}-vCPU worker"
    )
    if measured.rss_growth is not None and measured.rss_growth[0] > MEMORY_FLAT:
        lines.append(
            f"warning: the worker's peak memory grew past {MEMORY_FLAT}x between the measured sizes: "
            "it is not flat, and its value at this plan's size is not known from these figures"
        )
    lines.append(
        f"plan: {result.cpu_workers} CPU workers x {vcpus} vCPUs + {result.gpus} GPU workers, "
        f"{result.hours:.1f} h, about ${result.cost:,.0f}; bound by {result.bound}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=float, required=True, help="pairs in the URL lists")
    parser.add_argument("--hours", type=float, default=24.0, help="wall-clock target")
    parser.add_argument("--measured", default=str(MEASURED), help="benchmarks/scale.py --json output")
    parser.add_argument("--strict", action="store_true", help="refuse figures that grew between sizes")
    parser.add_argument("--text-keep", type=float, default=0.92, help="share of pairs the text stage keeps")
    parser.add_argument("--crawl-success", type=float, default=0.55, help="share of fetches that download")
    parser.add_argument("--crawl-rate", type=float, default=CRAWL_PER_CORE, help="fetches/s per core")
    parser.add_argument("--gpu-rate", type=float, default=2_000.0, help="embedded images/s per GPU")
    parser.add_argument("--vcpus-per-worker", type=int, default=16)
    parser.add_argument("--vcpu-hour", type=float, default=Prices.vcpu_hour, help="price of a vCPU-hour")
    parser.add_argument("--gb-hour", type=float, default=Prices.gb_hour, help="price of a GB-hour")
    parser.add_argument("--gpu-hour", type=float, default=Prices.gpu_hour, help="price of a GPU-hour")
    parser.add_argument("--shuffle-gb", type=float, default=Prices.shuffle_gb, help="price of a GB shuffled")
    args = parser.parse_args(argv)
    try:
        measured = Measured.load(args.measured, strict=args.strict)
    except MeasuredError as why:
        parser.exit(2, f"sizing: error: {why}\n")
    prices = Prices(args.vcpu_hour, args.gb_hour, args.gpu_hour, shuffle_gb=args.shuffle_gb)
    result = plan(
        args.pairs,
        args.hours,
        measured,
        text_keep=args.text_keep,
        crawl_success=args.crawl_success,
        crawl_rate=args.crawl_rate,
        gpu_rate=args.gpu_rate,
        vcpus_per_worker=args.vcpus_per_worker,
        prices=prices,
    )
    print("\n".join(report(args.pairs, args.hours, result, measured, args.vcpus_per_worker)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
