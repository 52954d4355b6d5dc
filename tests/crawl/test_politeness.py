"""robots.txt (RFC 9309), opt-out signals and per-host politeness, against hostile loopback sites."""

from __future__ import annotations

import concurrent.futures as cf
import time
import tracemalloc

import pytest

from tests.hostile import TDMREP_RULES, HostileSite, huge_robots_txt
from transforms.crawl.config import FetchOptions
from transforms.crawl.fetch import Fetcher, FetchError
from transforms.crawl.optouts import content_usage_disallows, parse_tdmrep, tdm_rules_reserve
from transforms.crawl.politeness import HostThrottle
from transforms.crawl.robots import SiteFile, robots_rules


def options(**overrides) -> FetchOptions:
    return FetchOptions(**{"allow_private_networks": True, "timeout": 3, "deadline": 6, **overrides})


def reason(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(url)
    return caught.value.reason


@pytest.fixture(scope="module")
def site():
    with HostileSite("rules", tdmrep=TDMREP_RULES) as site:
        yield site


def test_robots_txt_disallows_before_any_request_and_is_fetched_once(site):
    fetcher = Fetcher(options())
    with cf.ThreadPoolExecutor(8) as pool:  # eight threads ask for the same origin's rules at once
        results = list(pool.map(lambda i: fetcher.fetch(site.url(f"/free/{i}.jpg")).http_status, range(8)))
    assert results == [200] * 8
    assert reason(fetcher, site.url("/private/a.jpg")) == "opted_out_robots_txt"
    assert reason(fetcher, site.url("/no-winnow/a.jpg")) == "opted_out_robots_txt"  # our own group
    assert fetcher.fetch(site.url("/no-winnow/a.jpg").replace("no-winnow", "other")).http_status == 200
    assert site.requests.count("/robots.txt") == 1
    assert not [p for p in site.requests if p.startswith(("/private/", "/no-winnow/"))]
    # Another agent token reads the `*` group, which allows /no-winnow/.
    assert (
        Fetcher(options(user_agent_token="otherbot")).fetch(site.url("/no-winnow/b.jpg")).http_status == 200
    )


def test_a_redirect_into_a_disallowed_path_is_not_followed(site):
    assert reason(Fetcher(options()), site.url("/hostile/to-private")) == "opted_out_robots_txt"
    assert "/private/a.jpg" not in site.requests


def test_each_signal_can_be_switched_off(site):
    off = Fetcher(
        options(
            respect_robots_txt=False,
            respect_tdmrep=False,
            respect_content_usage=False,
            respect_x_robots_tag=False,
        )
    )
    for path in [
        "/private/c.jpg",
        "/reserved/c.jpg",
        "/hostile/tdm-header",
        "/hostile/content-usage",
        "/hostile/x-robots-noai",
    ]:
        assert off.fetch(site.url(path)).http_status == 200, path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/hostile/x-robots-noai", "opted_out_x_robots_tag"),  # case-insensitive
        ("/hostile/x-robots-ours", "opted_out_x_robots_tag"),  # agent-scoped, repeated headers
        ("/hostile/x-robots-theirs", None),  # addressed to another agent
        ("/hostile/tdm-header", "opted_out_tdmrep"),
        ("/hostile/tdm-header-0", None),
        ("/reserved/a.jpg", "opted_out_tdmrep"),  # tdmrep.json's first matching rule
        ("/hostile/content-usage", "opted_out_content_usage"),
        ("/hostile/content-usage-other", None),
    ],
)
def test_opt_out_signals(site, path, expected):
    fetcher = Fetcher(options())
    if expected is None:
        assert fetcher.fetch(site.url(path)).http_status == 200
    else:
        assert reason(fetcher, site.url(path)) == expected
    if path.startswith("/reserved/"):
        assert path not in site.requests  # the file said so before the image was asked for


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("error", "robots_unreachable"),  # 5xx: the whole origin is disallowed
        ("missing", None),  # 4xx: everything allowed
        ("html", None),  # a web page has no rules
        ("redirect", "opted_out_robots_txt"),  # three redirects are followed to the rules
        ("huge", None),  # only the first 500 KiB is parsed: the final `Disallow: /` is never seen
    ],
)
def test_robots_txt_answers(behaviour, expected):
    huge_robots_txt()  # the server's own copy is made before measuring
    with HostileSite(behaviour) as site:
        fetcher = Fetcher(options())
        tracemalloc.start()
        try:
            if expected is None:
                assert fetcher.fetch(site.url("/free/a.jpg")).http_status == 200
            else:
                assert reason(fetcher, site.url("/private/a.jpg")) == expected
                assert reason(fetcher, site.url("/private/b.jpg")) == expected
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert site.requests.count("/robots.txt") == 1
        assert not [p for p in site.requests if p.startswith("/private/")]
        assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # a 10 MB robots.txt is not held
        if behaviour == "huge":  # the rule at the top still applies
            assert reason(fetcher, site.url("/private/c.jpg")) == "opted_out_robots_txt"


def test_robots_txt_reading_follows_rfc_9309():
    assert robots_rules(SiteFile(None, error="timeout", reason="timeout")).robots == "disallow_all"
    assert robots_rules(SiteFile(429)).robots == "disallow_all"
    assert robots_rules(SiteFile(500)).robots == "disallow_all"
    assert robots_rules(SiteFile(403)).robots == "allow_all"
    assert robots_rules(SiteFile(310)).robots == "allow_all"  # more than five redirects: unavailable
    parsed = robots_rules(SiteFile(200, b"User-agent: *\nDisallow: /a\nCrawl-delay: 2.5\n"))
    assert not parsed.robots_allows("http://h/a/b", "winnow") and parsed.robots_allows("http://h/b", "winnow")
    assert parsed.crawl_delay("winnow") == 2.5


def test_an_unreachable_host_fails_with_the_transport_reason_not_an_opt_out():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert reason(Fetcher(options()), f"http://127.0.0.1:{port}/a.jpg") == "connection_error"


def test_crawl_delay_is_honoured_up_to_the_cap():
    with HostileSite("rules", crawl_delay=1) as site:
        fetcher = Fetcher(options())
        for i in range(3):
            fetcher.fetch(site.url(f"/free/{i}.jpg"))
        starts = [site.times[f"/free/{i}.jpg"][0] for i in range(3)]
        assert all(b - a >= 0.95 for a, b in zip(starts, starts[1:], strict=False)), starts
    with HostileSite("rules", crawl_delay=3600) as site:  # an hour is cut to max_crawl_delay
        fetcher = Fetcher(options(max_crawl_delay=0.4))
        for i in range(3):
            fetcher.fetch(site.url(f"/free/{i}.jpg"))
        starts = [site.times[f"/free/{i}.jpg"][0] for i in range(3)]
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert all(0.35 <= gap < 5 for gap in gaps), gaps


@pytest.mark.parametrize(("cap", "most"), [(2, 2), (0, 8)])
def test_per_host_concurrency_cap(cap, most):
    with HostileSite("missing") as site:
        fetcher = Fetcher(options(max_per_host=cap))
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: fetcher.fetch(site.url(f"/slow/{i}.jpg")), range(8)))
        if cap:
            assert site.max_active == most  # never more, and the cap was reached
        else:
            assert site.max_active > 2  # without a cap the same load does exceed it


def test_min_host_delay_spaces_request_starts():
    throttle = HostThrottle(max_per_host=0)
    clock_starts = []
    for _ in range(3):
        with throttle.slot("h", delay=0.3):
            clock_starts.append(time.monotonic())
    with throttle.slot("other-host", delay=0.3) as waited:
        assert waited < 0.05  # hosts do not wait for each other
    assert all(b - a >= 0.29 for a, b in zip(clock_starts, clock_starts[1:], strict=False))


def test_tdmrep_and_content_usage_parsers():
    rules = parse_tdmrep(
        b'[{"location": "/img/*.png$", "tdm-reservation": 1}, {"location": "/", "tdm-reservation": 0}]'
    )
    assert tdm_rules_reserve(rules, "/img/a/b.png") and not tdm_rules_reserve(rules, "/img/a.png?x=1")
    assert not tdm_rules_reserve(rules, "/other.png")
    for bad in [b"{}", b"not json", b'[{"location": "/"}]', b'[{"location": "/", "tdm-reservation": 2}]']:
        with pytest.raises(ValueError, match="tdmrep.json"):
            parse_tdmrep(bad)
    assert content_usage_disallows(["train-ai=n;exp=1"], ["train-ai"])
    assert content_usage_disallows(["search=y", "TRAIN-AI = N"], ["train-ai"])
    assert not content_usage_disallows(["train-genai=n, train-ai=y"], ["train-ai"])
    assert not content_usage_disallows(["train-ai"], ["train-ai"])  # a bare key is no preference


@pytest.mark.parametrize("guarded", [False, True])
def test_headers_dripped_a_byte_at_a_time_are_cut_at_the_deadline(site, guarded, monkeypatch):
    if guarded:  # the SSRF-guarded connections are watched too (127.0.0.1 stands in for the public web)
        import transforms.crawl.netguard as netguard

        monkeypatch.setattr(netguard, "forbidden_reason", lambda ip: None)
    fetcher = Fetcher(options(timeout=1, deadline=1.5, allow_private_networks=not guarded))
    started = time.monotonic()
    with pytest.raises(FetchError, match="deadline of 1.5s exceeded") as caught:
        fetcher.fetch(site.url("/hostile/drip-headers"))
    # Each header byte comes within the 1 s read timeout; only the deadline can end the wait.
    assert caught.value.reason == "timeout" and time.monotonic() - started < 3


def test_the_host_cap_holds_per_process_across_dofn_instances():
    """Two bundle threads of one worker process run two DoFn instances; they share one fetcher, so
    `max_per_host` bounds the process, not each instance."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from schemas import Sample, make_uid
    from transforms.crawl import CrawlConfig, DownloadImages

    config = CrawlConfig(allow_private_networks=True, max_per_host=2, thread_count=8, timeout=3, deadline=6)
    threads = PipelineOptions(direct_num_workers=2, direct_running_mode="multi_threading")
    with HostileSite("missing") as site:
        urls = [site.url(f"/slow/{i}.jpg") for i in range(24)]
        samples = [Sample(uid=make_uid(url, "c"), url=url, caption="c") for url in urls]
        with beam.Pipeline(runner=FnApiRunner(), options=threads) as p:
            _ = p | beam.Create(samples) | beam.Reshuffle() | DownloadImages(config)
        assert site.max_active == 2
