from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (each start costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh instance, never a cluster someone started on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray


def write_images(
    root: Path, per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog"), size=(36, 44), seed: int = 0
) -> list[Path]:
    """A small image folder of random RGB PNGs (class sub-folders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / c / f"img{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    return paths


@pytest.fixture()
def probe_dir(tmp_path: Path) -> Path:
    root = tmp_path / "probe"
    write_images(root)
    return root


USER_MODULE = '''"""A user's own model file, as `mymodel.py` next to a spec."""
from torchvision import transforms as T

from neurodis.models.tiny import TinyCNN


def build():
    return TinyCNN(seed=3)


def transform():
    return T.Compose(
        [T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])]
    )


def transform_bicubic():  # the same numbers as transform(), another resampling filter
    return T.Compose(
        [
            T.Resize(40, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]),
        ]
    )


def squash():  # no readable geometry: every image squashed to 32 x 32
    to_tensor = T.ToTensor()
    return lambda image: to_tensor(image.resize((32, 32)))


def preset():  # torchvision's eval transform for its ResNet-50 weights (nothing is downloaded)
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.DEFAULT.transforms()


def not_a_transform():
    return 3


def wrong_shape():
    return T.Compose([T.Resize(40), T.ToTensor()])


def uint8():
    return T.Compose([T.Resize(40), T.CenterCrop(32), T.PILToTensor()])


def broken():
    raise RuntimeError("no weights here")


def embedder():
    from neurodis.models.tiny import ToyEmbedder

    return ToyEmbedder()
'''


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The name of a module file (``USER_MODULE``) in a fresh folder that becomes the current directory
    and is on no import path, as for a user running ``neurodis`` next to their ``mymodel.py`` (the
    console script puts no current directory on ``sys.path``). The name is unique per test."""
    import sys
    import uuid

    name = f"user_model_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.curdir)])
    yield name
    sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-API server on 127.0.0.1 (moto's standalone server, in its own process) for the session,
    with authentication on: one IAM user whose access key may do anything in S3. Yields
    ``{"endpoint", "key", "secret"}``."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the first 3 requests (creating the user, its key and its policy) run before authentication starts
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="neurodis")
        key = iam.create_access_key(UserName="neurodis")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="neurodis", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def s3_bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's S3 server, with this process's environment holding the standard
    AWS variables for it (credentials and endpoint). Returns ``s3://BUCKET``."""
    import uuid

    import boto3

    env = s3_env(s3_server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"nd-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return f"s3://{bucket}"


def s3_env(server: dict[str, str]) -> dict[str, str]:
    """The standard AWS environment for the test server (what a cluster's nodes would hold)."""
    return {
        "AWS_ACCESS_KEY_ID": server["key"],
        "AWS_SECRET_ACCESS_KEY": server["secret"],
        "AWS_ENDPOINT_URL": server["endpoint"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
