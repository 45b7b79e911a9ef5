"""Load benchmark for `genir serve` (not a test): concurrent HTTP clients on loopback.

    .venv/bin/python benchmarks/serve_load.py --index runs/demo/fashion-mnist/index \\
        --clients 1,4,16 --seconds 30 --adds-per-s 2

Copies the index to a temporary folder (adds change it), starts `genir serve` on a free
port, and for each client count runs that many threads, each with its own keep-alive
connection, sending POST /search for a bounded time: image queries (Fashion-MNIST test
images as PNG uploads) for an image-only index, captions for a text-capable one. With
--adds-per-s, one more client adds new items (POST /items) at that rate during the run,
so searches are measured while the index changes. Prints and writes queries/s, p50/p95/p99
latency and the error count (any non-2xx or connection error) per setting.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmnist_pngs(n: int, seed: int = 0) -> list[bytes]:
    from genir.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist("test")
    rows = np.random.default_rng(seed).choice(len(test), n, replace=False)
    out = []
    for r in rows:
        buf = io.BytesIO()
        Image.fromarray(test.images[r]).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def captions(n: int, seed: int = 0) -> list[str]:
    from genir.data.openclipart import load_openclipart

    texts = load_openclipart(validate=False).texts
    rows = np.random.default_rng(seed).choice(len(texts), n, replace=False)
    return [texts[r] for r in rows]


def run_clients(url: str, clients: int, seconds: float, make_request, adds_per_s: float,
                add_images: list[bytes]) -> dict:
    deadline = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * (clients + 1)
    adds = [0]

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = make_request(c, rng)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies[i].append(time.perf_counter() - t0)
                else:
                    errors[i] += 1

    def adder() -> None:
        period = 1.0 / adds_per_s
        with httpx.Client(base_url=url, timeout=60) as c:
            n = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                png = add_images[n % len(add_images)]
                try:
                    r = c.post("/items", files={"image": ("a.png", png, "image/png")},
                               data={"id": f"load-{clients}-{n}", "caption": "load test"})
                    ok = r.status_code == 201
                except httpx.HTTPError:
                    ok = False
                if ok:
                    adds[0] += 1
                else:
                    errors[clients] += 1
                n += 1
                time.sleep(max(period - (time.perf_counter() - t0), 0))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if adds_per_s > 0 and add_images:
        threads.append(threading.Thread(target=adder))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    return {"clients": clients, "seconds": wall, "queries": len(lat),
            "queries_per_s": len(lat) / wall, "adds": adds[0], "errors": int(sum(errors)),
            **{f"p{p}_ms": float(np.percentile(lat, p)) if len(lat) else None
               for p in (50, 95, 99)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True, help="an index folder (copied first)")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration per client count")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rerank", action="store_true")
    ap.add_argument("--adds-per-s", type=float, default=0.0, help="live adds during the run")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/serve_load.json"))
    args = ap.parse_args()

    manifest = json.loads((args.index / "manifest.json").read_text())
    encoder = manifest["extra"]["encoder"]["type"]
    text_queries = encoder in ("aligned", "clip")
    pool = captions(500) if text_queries else fmnist_pngs(500)
    add_images = fmnist_pngs(200, seed=1) if not text_queries else []
    if text_queries and args.adds_per_s:
        from genir.data.openclipart import load_openclipart

        paths = load_openclipart(limit=200).images
        add_images = [Path(p).read_bytes() for p in paths]

    def make_request(c: httpx.Client, rng: np.random.Generator) -> httpx.Response:
        q = pool[int(rng.integers(len(pool)))]
        data = {"k": str(args.k), "rerank": str(args.rerank).lower()}
        if text_queries:
            return c.post("/search", data={**data, "text": q})
        return c.post("/search", data=data, files={"image": ("q.png", q, "image/png")})

    tmp = Path(tempfile.mkdtemp(prefix="genir-load-"))
    folder = tmp / "index"
    shutil.copytree(args.index, folder, ignore=shutil.ignore_patterns(".writer.lock"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "genir"), "serve", str(folder),
                               "--port", str(port), "--log-level", "warning"],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start in 300 s")
        with httpx.Client(base_url=url, timeout=60) as c:   # warm-up
            rng = np.random.default_rng(99)
            for _ in range(5):
                make_request(c, rng).raise_for_status()
        rows = [run_clients(url, int(n), args.seconds, make_request, args.adds_per_s, add_images)
                for n in args.clients.split(",")]
        stats = httpx.get(f"{url}/stats").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"index {args.index} ({stats['items']} items after the run), "
          f"{'text' if text_queries else 'image'} queries, k={args.k}, rerank={args.rerank}, "
          f"{args.adds_per_s} adds/s, {os.cpu_count()} CPUs")
    print("| clients | queries/s | p50 ms | p95 ms | p99 ms | queries | adds | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['clients']} | {r['queries_per_s']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['queries']} | {r['adds']} | "
              f"{r['errors']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "rows": rows, "server_stats": stats}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
