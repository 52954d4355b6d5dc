"""The `crawl` section: HTTP keys (`FetchOptions`), image keys (`ImageOptions`) and the crawl's own."""

from __future__ import annotations

import dataclasses
from typing import Literal

from transforms.common.checks import MAX_SECONDS, Check
from transforms.crawl.robots import MAX_TTL_S

ResizeMode = Literal["no", "keep_ratio", "center_crop", "keep_ratio_largest", "border", "fixed"]


EncodeFormat = Literal["jpg", "png", "webp"]


Interpolation = Literal["nearest", "linear", "bilinear", "cubic", "bicubic", "area", "lanczos", "lanczos4"]


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """What to do with each image (the image keys of the `crawl` config section)."""

    image_size: int = 256
    resize_mode: ResizeMode = "border"
    resize_only_if_bigger: bool = False
    upscale_interpolation: Interpolation = "lanczos"
    downscale_interpolation: Interpolation = "area"
    encode_format: EncodeFormat = "jpg"
    encode_quality: int = 95
    min_image_size: int = 0
    max_image_area: float | None = None
    max_aspect_ratio: float | None = None


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """The HTTP keys of the `crawl` config section (img2dataset's names where it has them)."""

    #: Connect and per-read timeout in seconds.
    timeout: float = 10.0
    #: Total seconds one image may take, redirects and body included; waiting for a host's turn
    #: is not counted.
    deadline: float = 30.0
    #: Extra attempts after a timeout, connection error, 429 or 5xx (never after a 404 or other 4xx).
    retries: int = 0
    #: Wait before retry n (from 0): `retry_backoff * 2**n` seconds, or the server's Retry-After
    #: when that is longer.
    retry_backoff: float = 1.0
    #: Longest Retry-After honoured, in seconds; a server asking for longer fails the sample
    #: (its reason stays `http_429` / `http_503`) instead of holding a download thread.
    max_retry_after: float = 60.0
    #: Redirects followed per image (at most 10).
    max_redirects: int = 5
    #: Largest body accepted, in bytes (after Content-Encoding is undone).
    max_image_bytes: int = 10_000_000
    #: Our token: matched against robots.txt user-agent groups and `X-Robots-Tag: <token>: ...`.
    user_agent_token: str = "winnow"
    #: The User-Agent header; empty: `Mozilla/5.0 (compatible; <token>; image-text dataset crawler)`.
    user_agent: str = ""
    #: Requests at once to one host, per worker process (0: no cap).
    max_per_host: int = 8
    #: Least seconds between the starts of two requests to one host.
    min_host_delay: float = 0.0
    #: Longest robots.txt Crawl-delay honoured, in seconds; a longer one is cut to this.
    max_crawl_delay: float = 10.0
    #: Obey robots.txt (`opted_out_robots_txt`, `robots_unreachable`).
    respect_robots_txt: bool = True
    #: Seconds an origin's robots.txt and tdmrep.json are kept (at most 86400, RFC 9309).
    robots_cache_ttl: float = 86400.0
    #: Obey `X-Robots-Tag` (`opted_out_x_robots_tag`).
    respect_x_robots_tag: bool = True
    #: X-Robots-Tag directives that opt an image out (img2dataset's defaults).
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    #: Obey TDMRep: the `tdm-reservation` header and `/.well-known/tdmrep.json` (`opted_out_tdmrep`).
    respect_tdmrep: bool = True
    #: Obey the `Content-Usage` header of IETF AI Preferences (`opted_out_content_usage`).
    respect_content_usage: bool = True
    #: Content-Usage categories whose `n` opts an image out.
    content_usage_categories: tuple[str, ...] = ("train-ai",)
    #: Let the crawl connect to loopback, private, link-local and other non-public addresses
    #: (`transforms/crawl/netguard.py`); only for crawling one's own network or the loopback sample web.
    allow_private_networks: bool = False

    def __post_init__(self) -> None:
        check = Check("crawl", self)
        check.above(0, "timeout", "deadline", "max_image_bytes")
        check.at_least(0, "retries", "retry_backoff", "max_retry_after", "max_per_host")
        check.at_least(0, "min_host_delay", "max_crawl_delay")
        check.between(0, 10, "max_redirects")
        times = (
            "timeout",
            "deadline",
            "retry_backoff",
            "max_retry_after",
            "min_host_delay",
            "max_crawl_delay",
        )
        check.at_most(MAX_SECONDS, *times)
        if not 0 < self.robots_cache_ttl <= MAX_TTL_S:
            raise ValueError(
                f"crawl.robots_cache_ttl ({self.robots_cache_ttl!r}) must be in (0, {MAX_TTL_S:g}] "
                "seconds (RFC 9309)"
            )
        check.token("user_agent_token")
        check.header_value("user_agent")
        check.not_empty("disallowed_header_directives", "content_usage_categories")

    @property
    def user_agent_header(self) -> str:
        return (
            self.user_agent
            or f"Mozilla/5.0 (compatible; {self.user_agent_token}; image-text dataset crawler)"
        )


@dataclasses.dataclass(frozen=True)
class CrawlConfig(FetchOptions, ImageOptions):
    """The `crawl` section: HTTP keys (`FetchOptions`) and image keys (`ImageOptions`)."""

    #: Concurrent downloads per worker process.
    thread_count: int = 64
    #: Images decoded and resized at once per worker process; 0 = one per CPU core, plus one.
    decode_threads: int = 0
    #: Share of the crawled samples that may fail transiently (timeouts, DNS, connection errors,
    #: 5xx, 429) before the run raises an alarm instead of finishing quietly (1.0: never).
    max_failure_rate: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check = Check("crawl", self)
        check.at_least(1, "thread_count")
        # The largest side each format can encode (JPEG and PNG 65,535 pixels, WebP 16,383).
        check.between(1, 16383 if self.encode_format == "webp" else 65535, "image_size")
        check.at_least(0, "decode_threads", "min_image_size")
        check.between(0, 1, "max_failure_rate")
        check.above(0, "max_image_area")
        # An image's aspect ratio (long side / short side) is at least 1.
        check.at_least(1, "max_aspect_ratio")
        if self.max_image_area is not None and self.min_image_size**2 > self.max_image_area:
            raise ValueError(
                f"crawl.min_image_size ({self.min_image_size}) squared must be <= "
                f"crawl.max_image_area ({self.max_image_area:g}): no image could pass both"
            )
        valid_quality = range(10) if self.encode_format == "png" else range(101)
        if self.encode_quality not in valid_quality:
            raise ValueError(
                f"crawl.encode_quality {self.encode_quality} is out of range for {self.encode_format} "
                f"({valid_quality.start}..{valid_quality.stop - 1})"
            )
