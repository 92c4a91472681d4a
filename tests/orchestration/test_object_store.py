"""Run directories, probe images and checkpoints on an object store: a real S3-API server on 127.0.0.1
(``s3_server``), reached through the real client path (pyarrow's S3 filesystem, credentials and
endpoint from the standard AWS environment variables). Whole audits on the store (every method, on Ray,
killed workers and a killed driver) are in ``tests/pipeline/test_method_invariants.py``."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neurodis.config import spec_from_dict
from neurodis.data.probe import BadImageError
from neurodis.io.layout import RunLayout
from neurodis.io.manifest import commit_unit, committed
from neurodis.io.store import StorePath
from neurodis.orchestration.audit import run_audit
from neurodis.orchestration.runners import LocalRunner
from neurodis.types import SpecError
from tests.conftest import write_images


def _spec_dict(probe: Path, out: str) -> dict:
    return {
        "model": {"arch": "neurodis.models.tiny:tiny_cnn"},
        "data": {"kind": "imagefolder", "root": str(probe)},
        "layers": ["layer1", "layer2.0"],
        "forward": {"top_k": 3, "batch_size": 4, "shard_size": 4},
        "output": out,
    }


def _objects(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    root = StorePath.of(uri)
    assert root.fs is not None
    sel = pafs.FileSelector(root.key, recursive=True, allow_not_found=True)
    return sorted(
        i.path[len(root.key) + 1 :] for i in root.fs.get_file_info(sel) if i.type == pafs.FileType.File
    )


def test_concurrent_attempts_at_one_unit_commit_one_consistent_set(s3_bucket):
    """Last manifest wins, and it names only its own attempt's files: never a mix of two attempts."""
    layout = RunLayout(f"{s3_bucket}/race")
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        tables = {name: pa.table({"attempt": [i] * 3, "table": [name] * 3}) for name in ("a", "b", "c")}
        barrier.wait()
        commit_unit(layout, "stage", "unit-1", "h", tables, meta={"attempt": i})

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = committed(layout, "stage")["unit-1"]
    fs = layout.root.fs
    seen = {
        name: pq.read_table((layout.root / rel).key, filesystem=fs)["attempt"].to_pylist()
        for name, rel in m.files.items()
    }
    assert set(seen) == {"a", "b", "c"}
    assert {v for vals in seen.values() for v in vals} == {m.meta["attempt"]}
    tokens = {rel.rsplit(".", 2)[-2] for rel in m.files.values()}
    assert len(tokens) == 1  # one attempt's files
    assert len(_objects(f"{s3_bucket}/race/a")) == 8  # every attempt wrote its own, none overwrote another


def _first_line_error(spec, out: str | None = None) -> str:
    with pytest.raises(SpecError) as e:
        run_audit(spec, out=out, runner=LocalRunner())
    text = str(e.value)
    assert "\n" not in text.strip(), text
    return text


def test_missing_bucket_and_wrong_credentials_fail_at_preflight(tmp_path, s3_bucket, s3_server, monkeypatch):
    probe = tmp_path / "probe"
    write_images(probe, per_class=2)
    missing = _first_line_error(spec_from_dict(_spec_dict(probe, "s3://no-such-bucket-nd/run")))
    assert "bucket 'no-such-bucket-nd' does not exist" in missing and "create it" in missing
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = _first_line_error(spec_from_dict(_spec_dict(probe, f"{s3_bucket}/run")))
    assert wrong.startswith(f"output '{s3_bucket}/run': the store refused access (AWS Error"), wrong
    assert "AWS_ACCESS_KEY_ID" in wrong and s3_server["key"] not in wrong and "not-the-secret" not in wrong
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    assert _objects(s3_bucket) == []  # nothing was computed or written
    # probe images in a missing bucket: one line naming data.root, before any compute
    spec = spec_from_dict(
        {
            **_spec_dict(probe, str(tmp_path / "run")),
            "data": {"kind": "imagefolder", "root": "s3://no-such-bucket-nd/p"},
        }
    )
    no_data = _first_line_error(spec)
    assert no_data.startswith(
        "data.root 's3://no-such-bucket-nd/p': bucket 'no-such-bucket-nd' does not exist"
    )
    assert not (tmp_path / "run").exists()


def test_probe_set_on_s3_lists_decodes_and_fingerprints_like_the_local_folder(tmp_path, s3_bucket):
    import pyarrow.fs as pafs

    from neurodis.data.probe import decode, decoders, fingerprint, list_probe_set
    from neurodis.sections import DataConfig

    probe = tmp_path / "probe"
    write_images(probe, per_class=3)
    (probe / ".hidden").mkdir()
    write_images(probe / ".hidden", per_class=1)  # hidden folders and files are not probe images
    (probe / "cat" / "notes.txt").write_text("not an image")
    store = StorePath.of(f"{s3_bucket}/probe")
    pafs.copy_files(str(probe), store.key, destination_filesystem=store.fs)

    local = list_probe_set(DataConfig(kind="imagefolder", root=str(probe)))
    remote = list_probe_set(DataConfig(kind="imagefolder", root=f"{s3_bucket}/probe"))
    assert len(local) == 6 and [(r.image_id, r.label) for r in remote] == [
        (r.image_id, r.label) for r in local
    ]
    assert [r.path for r in remote] == [r.path.replace(str(probe), f"{s3_bucket}/probe") for r in local]
    for a, b in zip(local, remote):
        assert (decode(a.path) == decode(b.path)).all()

    # a manifest on the store with relative paths (and one absolute URI) names the same images
    rel = [r.path[len(str(probe)) + 1 :] for r in local]
    rows = (
        "path,label\n"
        + "".join(f"{p},{r.label}\n" for p, r in zip(rel[:-1], local))
        + f"{remote[-1].path},dog\n"
    )
    StorePath.of(f"{s3_bucket}/probe/manifest.csv").write_text(rows)
    listed = list_probe_set(DataConfig(kind="manifest", manifest=f"{s3_bucket}/probe/manifest.csv"))
    assert [r.path for r in listed] == [r.path for r in remote]

    # the fingerprint follows the objects: rewriting one image changes it, an unchanged store keeps it
    before = fingerprint(remote)
    assert fingerprint(list_probe_set(DataConfig(kind="imagefolder", root=f"{s3_bucket}/probe"))) == before
    StorePath.of(remote[0].path).write_bytes(StorePath.of(remote[1].path).read_bytes() + b"\0")
    assert fingerprint(remote) != before
    # an object that is not an image, or is gone, is a bad image, not a crash; the prefetching reader
    # (downloads ahead on threads) gives what decode gives, in order
    StorePath.of(remote[2].path).write_bytes(b"not a png")
    StorePath.of(remote[3].path).unlink()
    for bad in remote[2:4]:
        with pytest.raises(BadImageError):
            decode(bad.path)
    calls = list(decoders([r.path for r in remote], ahead=2))
    assert len(calls) == len(remote)
    for i, (call, r) in enumerate(zip(calls, remote)):
        if i in (2, 3):
            with pytest.raises(BadImageError):
                call()
        else:
            assert (call() == decode(r.path)).all()


def test_checkpoint_on_s3_loads_the_saved_weights(s3_bucket):
    import io

    import torch

    from neurodis.models.loading import load_model
    from neurodis.models.tiny import tiny_cnn
    from neurodis.sections import ModelConfig

    trained = tiny_cnn()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    buf = io.BytesIO()
    torch.save({"epoch": 3, "model_state_dict": trained.state_dict()}, buf)
    StorePath.of(f"{s3_bucket}/ckpt/w.pt").write_bytes(buf.getvalue())
    model = load_model(ModelConfig(arch="neurodis.models.tiny:tiny_cnn", checkpoint=f"{s3_bucket}/ckpt/w.pt"))
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(SpecError) as e:
        load_model(ModelConfig(arch="neurodis.models.tiny:tiny_cnn", checkpoint=f"{s3_bucket}/ckpt/gone.pt"))
    assert (
        str(e.value)
        == f"model.checkpoint '{s3_bucket}/ckpt/gone.pt' does not exist; fix the path or leave checkpoint out"
    )
