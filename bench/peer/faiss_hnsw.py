"""The peer of the approximate-query benchmark: FAISS IndexHNSWFlat over the same vectors.

Reads little-endian f32 files written by reembed-bench (base: n x d, queries: q x d) and the
exact top-k row numbers of each query (truth: q x k int64), builds IndexHNSWFlat (inner
product on unit vectors = cosine) with the graph settings reembed uses, and for each efSearch
prints one JSON line: recall@k against the truth and the per-query search latency, one query
at a time on one thread, as reembed answers a query.

    python faiss_hnsw.py DIR DIMS K M EF_CONSTRUCTION EF1,EF2,...
"""

import json
import sys
import time

import faiss
import numpy as np


def main():
    directory, dims, k, m, ef_construction, efs = sys.argv[1:7]
    dims, k, m, ef_construction = int(dims), int(k), int(m), int(ef_construction)
    base = np.fromfile(f"{directory}/base.f32", dtype="<f4").reshape(-1, dims)
    queries = np.fromfile(f"{directory}/queries.f32", dtype="<f4").reshape(-1, dims)
    truth = np.fromfile(f"{directory}/truth.i64", dtype="<i8").reshape(-1, k)

    index = faiss.IndexHNSWFlat(dims, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    index.add(base)
    build = time.perf_counter() - started
    print(json.dumps({"build_secs": build, "vectors": int(index.ntotal)}), flush=True)

    faiss.omp_set_num_threads(1)
    for ef in [int(ef) for ef in efs.split(",")]:
        index.hnsw.efSearch = ef
        latencies, found = [], 0
        for rounds in range(3):
            for q in range(len(queries)):
                started = time.perf_counter()
                _, ids = index.search(queries[q : q + 1], k)
                latencies.append(time.perf_counter() - started)
                if rounds == 0:
                    found += len(set(ids[0].tolist()) & set(truth[q].tolist()))
        latencies.sort()
        print(
            json.dumps(
                {
                    "ef": ef,
                    "recall": found / truth.size,
                    "p50_ms": latencies[len(latencies) // 2] * 1e3,
                    "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
