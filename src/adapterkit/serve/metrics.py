"""Prometheus metrics for GET /metrics, through prometheus-client.

The engine and the adapter set keep plain counters; this module reads them at
scrape time (a custom collector), so neither imports Prometheus. Latencies are
histograms observed by the request handlers. Each app gets its own registry, so
several servers can live in one process (tests, embedding).
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self, engine, adapters, tokens_window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "adapterkit_request_latency_seconds", "Time from request arrival to its last byte",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.time_to_first_token = Histogram(
            "adapterkit_time_to_first_token_seconds", "Time from request arrival to its first token",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(engine, adapters, tokens_window_s))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    def __init__(self, engine, adapters, window_s: float) -> None:
        self.engine, self.adapters, self.window_s = engine, adapters, window_s
        self._samples: deque[tuple[float, int]] = deque()

    def _tokens_per_second(self) -> float:
        now, total = time.monotonic(), self.engine.stats.tokens_generated
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0

    def collect(self):
        stats, adapter_stats = self.engine.stats, self.adapters.stats
        yield GaugeMetricFamily("adapterkit_queue_depth", "Sequences waiting for a batch row", value=stats.waiting)
        yield GaugeMetricFamily("adapterkit_running_sequences", "Sequences in the running batch", value=stats.running)
        yield GaugeMetricFamily("adapterkit_resident_adapters", "Adapters loaded in the model",
                                value=len(self.adapters.resident))
        yield GaugeMetricFamily("adapterkit_tokens_per_second",
                                f"Generated tokens per second over the last {self.window_s:.0f} s between scrapes",
                                value=self._tokens_per_second())
        yield CounterMetricFamily("adapterkit_generated_tokens", "Tokens generated", value=stats.tokens_generated)
        yield CounterMetricFamily("adapterkit_adapter_loads", "Adapters loaded", value=adapter_stats.loads)
        yield CounterMetricFamily("adapterkit_adapter_load_seconds", "Time spent loading adapters (store read + install)",
                                  value=adapter_stats.load_seconds)
        yield CounterMetricFamily("adapterkit_adapter_load_failures", "Adapter loads that failed",
                                  value=adapter_stats.load_failures)
        yield CounterMetricFamily("adapterkit_adapter_evictions", "Adapters evicted (LRU) to make room",
                                  value=adapter_stats.evictions)
        yield CounterMetricFamily("adapterkit_combination_cache_hits",
                                  "merged_adapters requests served by a resident combination",
                                  value=adapter_stats.combination_hits)
        yield CounterMetricFamily("adapterkit_combination_cache_misses",
                                  "merged_adapters requests that built their combination",
                                  value=adapter_stats.combination_misses)
        yield CounterMetricFamily("adapterkit_combination_failures",
                                  "merged_adapters combinations refused or failed while being built",
                                  value=adapter_stats.combination_failures)
        yield CounterMetricFamily("adapterkit_engine_errors", "Engine passes that failed", value=stats.errors)
