"""`genir build FOLDER` on 10k images: embedding images/s, and a build killed half way then
resumed against an uninterrupted one.

Not a test: writes N synthetic PNG photos (coloured shapes on noise, 10 classes in
sub-folders), then
1. runs `genir build DIR --out a.index` uninterrupted: wall time and images/s of embedding
   (the manifest's embed_s);
2. starts the same build into b.index, SIGKILLs it once the embedding's progress file shows
   half the chunks done, runs the same command again and times it;
3. checks that b.index holds the same ids, codes and embeddings (bitwise) as a.index.

    .venv/bin/python benchmarks/embed_folder.py [--n 10000] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_images(root: Path, n: int, side: int = 96, seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % 10
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(rng.integers(0, 80, (side, side, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(im)
        color = tuple(int(c) for c in (np.array([label * 25, 255 - label * 20, (label * 70) % 255])
                                       * rng.uniform(0.7, 1.0)))
        x0, y0 = rng.integers(5, side // 2, size=2)
        box = (int(x0), int(y0), int(x0 + side // 3 + label * 3), int(y0 + side // 3))
        (draw.ellipse if label % 2 else draw.rectangle)(box, fill=color)
        im.save(folder / f"{i:06d}.png")


def build(cmd: list[str], kill_at_chunks: int | None = None, work: Path | None = None
          ) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    if kill_at_chunks is not None:
        assert work is not None
        while proc.poll() is None:
            done = 0
            for state in work.glob("*/progress.json"):
                try:
                    done = max(done, json.loads(state.read_text())["done"])
                except (OSError, ValueError):
                    pass
            if done >= kill_at_chunks:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    code = proc.wait()
    return time.perf_counter() - t0, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=200, help="decoder steps (the benchmark is "
                    "about embedding; the decoder is trained the same way in every run)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/genir-embed-folder"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    images = args.dir / "images"
    t0 = time.perf_counter()
    write_images(images, args.n)
    print(f"wrote {args.n} images in {time.perf_counter() - t0:.0f} s", flush=True)
    genir = str(Path(sys.executable).with_name("genir"))

    def command(out: str) -> list[str]:
        return [genir, "build", str(images), "--out", str(args.dir / out), "--steps",
                str(args.steps), "--no-progress"]

    wall_a, code = build(command("a.index"))
    assert code == 0
    extra_a = json.loads((args.dir / "a.index" / "manifest.json").read_text())["extra"]
    chunks = -(-args.n // 1024)
    wall_killed, code = build(command("b.index"), kill_at_chunks=chunks // 2,
                              work=args.dir / ".b.index.work")
    assert code == -signal.SIGKILL, code
    wall_b, code = build(command("b.index"))
    assert code == 0
    extra_b = json.loads((args.dir / "b.index" / "manifest.json").read_text())["extra"]
    check = subprocess.run([sys.executable, "-c", """
import sys, json, numpy as np
from genir.index import GenerativeIndex
a, b = GenerativeIndex.load(sys.argv[1]), GenerativeIndex.load(sys.argv[2])
print(json.dumps({"same_ids": a.item_ids == b.item_ids,
                  "same_embeddings_bitwise": a.item_emb.tobytes() == b.item_emb.tobytes(),
                  "same_codes": bool(np.array_equal(a.codes, b.codes))}))
""", str(args.dir / "a.index"), str(args.dir / "b.index")], check=True, capture_output=True,
                           text=True)
    result = {"images": args.n, "image_size": extra_a["encoder"]["image_size"],
              "uninterrupted_build_s": wall_a, "embed_s": extra_a["embed_s"],
              "images_per_s": args.n / extra_a["embed_s"],
              "killed_after_s": wall_killed, "killed_at_chunks": chunks // 2,
              "resumed_build_s": wall_b, "resumed_embed_s": extra_b["embed_s"],
              **json.loads(check.stdout)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
