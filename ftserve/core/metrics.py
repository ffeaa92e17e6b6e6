"""Prometheus metrics of the inference role; only prometheus_client here, so the engine may count too."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "ftserve_inference_requests_total", "Completion requests answered, by HTTP status", ["endpoint", "status"]
)
REQUEST_SECONDS = Histogram(
    "ftserve_inference_request_seconds",
    "Time from a request's submission to its last row finishing",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_SECONDS = Histogram(
    "ftserve_inference_queue_seconds",
    "Time a row waited between submission and joining a batch (window, adapter load, capacity)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_ROWS = Histogram(
    "ftserve_inference_batch_rows",
    "Rows in each decode step",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
GENERATED_TOKENS = Counter("ftserve_inference_generated_tokens_total", "Tokens generated")
TOKENS_PER_SECOND = Gauge(
    "ftserve_inference_tokens_per_second", "Tokens generated per second in the most recent decode step"
)
ACTIVE_ROWS = Gauge("ftserve_inference_active_rows", "Rows currently being decoded")
ROWS_FINISHED = Counter("ftserve_inference_rows_finished_total", "Rows finished, by reason", ["reason"])
ADAPTER_HITS = Counter("ftserve_adapter_cache_hits_total", "Requests whose adapter was already resident")
ADAPTER_MISSES = Counter("ftserve_adapter_cache_misses_total", "Requests whose adapter had to be loaded")
ADAPTER_LOADS = Counter("ftserve_adapter_loads_total", "Adapters read from disk and attached")
ADAPTER_LOAD_FAILURES = Counter("ftserve_adapter_load_failures_total", "Adapter loads that failed")
ADAPTER_EVICTIONS = Counter("ftserve_adapter_evictions_total", "Adapters evicted by the LRU (count or bytes limit)")
ADAPTER_UNLOADS = Counter("ftserve_adapter_unloads_total", "Adapters unloaded because their model was deleted")
ADAPTERS_RESIDENT = Gauge("ftserve_adapters_resident", "Adapters resident, all bases together")
ADAPTER_BYTES = Gauge("ftserve_adapter_bytes_resident", "Bytes of resident adapter weights, all bases together")
BATCH_REQUESTS = Counter(
    "ftserve_batch_requests_total", "Batch API requests this process ran and recorded, by outcome", ["outcome"]
)
EVAL_ITEMS = Counter(
    "ftserve_eval_items_total", "Eval run output items this process graded and recorded, by status", ["status"]
)
