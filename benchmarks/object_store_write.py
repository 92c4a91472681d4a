"""Forward-stage writes to an S3-API server on this machine vs the local filesystem.

Starts moto's standalone S3 server on 127.0.0.1 (``pip install 'moto[server]'``), then runs the forward
stage (in-process runner, same probe set, same spec) into a local folder, into ``s3://bench/run``, and
into ``s3://bench/run-images`` with the probe images read from ``s3://bench/probe`` too, and times each
(the tables of all three are checked equal). It reads and decodes every probe image from the store one
download at a time and with the forward stage's window of 16 downloads ahead. Then it rewrites every
committed forward table file of the local run through the commit path's writer to each target
(``write_parquet_atomic``: temp file + fsync + rename locally, one PUT on the store), which isolates
write throughput from compute.

    python benchmarks/object_store_write.py [--images 256] [--repeat 3]

The last line printed is one JSON object with the figures. moto keeps objects in memory in a Python
process, so the S3 figures are a lower bound on what a real store behind a network would do per node
only in the sense of request overhead; they say nothing about a remote store's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from neurodis.config import spec_from_dict
from neurodis.data.probe import decoders, list_probe_set
from neurodis.io.atomic import write_parquet_atomic
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import committed
from neurodis.io.store import StorePath
from neurodis.io.tables import dataset, read_table
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.schemas import TABLES


def make_images(root: Path, n: int, size: int = 64, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "c").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "c" / f"{i:05d}.png"
        )


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the moto server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    proc, url = start_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_ENDPOINT_URL=url,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe"
            make_images(probe, args.images)

            import pyarrow.fs as pafs

            store = StorePath.of("s3://bench")
            pafs.copy_files(str(probe), "bench/probe", destination_filesystem=store.fs)

            def spec(out: str, images: str):  # type: ignore[no-untyped-def]
                return spec_from_dict(
                    {
                        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
                        "data": {"kind": "imagefolder", "root": images},
                        "layers": ["layer1", "layer2.0", "layer2"],
                        "forward": {"top_k": 20, "batch_size": 32, "shard_size": 32},
                        "output": out,
                    }
                )

            stage = {}
            for name, out, images in (
                ("local", str(Path(tmp) / "local"), str(probe)),
                ("s3", "s3://bench/run", str(probe)),
                ("s3_with_images_on_s3", "s3://bench/run-images", "s3://bench/probe"),
            ):
                t0 = time.perf_counter()
                run_audit(spec(out, images), runner=LocalRunner())
                stage[name] = time.perf_counter() - t0
            for t in ("references", "neurons", "activations"):
                for run in ("s3://bench/run", "s3://bench/run-images"):
                    assert read_table(run, t).equals(read_table(Path(tmp) / "local", t)), (run, t)
            uris = [r.path for r in list_probe_set(spec("unused", "s3://bench/probe").data)]
            read = {}
            for ahead in (1, 16):  # 1: one download at a time; 16: the forward stage's window
                t0 = time.perf_counter()
                for call in decoders(uris, ahead=ahead):
                    call()
                read[ahead] = time.perf_counter() - t0
            layout = RunLayout(Path(tmp) / "local")
            files = [
                (name, layout.root / rel)
                for m in committed(layout, "forward").values()
                for name, rel in m.files.items()
            ]
            tables = [dataset([p], TABLES[name].schema).to_table() for name, p in files]
            nbytes = sum(os.path.getsize(p) for _, p in files)
            write = {}
            for name, base in (
                ("local", StorePath.of(Path(tmp) / "rewrite")),
                ("s3", StorePath.of("s3://bench/rw")),
            ):
                best = float("inf")
                for r in range(args.repeat):
                    t0 = time.perf_counter()
                    for i, table in enumerate(tables):
                        write_parquet_atomic(table, base / f"{r}" / f"{i}.parquet", base / "_tmp")
                    best = min(best, time.perf_counter() - t0)
                write[name] = best
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "benchmark": "object_store_write",
        "images": args.images,
        "forward_stage_s": {k: round(v, 3) for k, v in stage.items()},
        "forward_stage_s3_vs_local": round(stage["s3"] / stage["local"], 3),
        "forward_stage_images_on_s3_vs_local": round(stage["s3_with_images_on_s3"] / stage["local"], 3),
        "read_and_decode_images_s": {f"ahead_{k}": round(v, 3) for k, v in read.items()},
        "files": len(tables),
        "bytes": nbytes,
        "write_s": {k: round(v, 4) for k, v in write.items()},
        "write_mb_per_s": {k: round(nbytes / v / 1e6, 2) for k, v in write.items()},
        "write_files_per_s": {k: round(len(tables) / v, 1) for k, v in write.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
