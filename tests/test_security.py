"""Issue 8, security: model files checked before loading, outputs kept under the output
root, inputs opened read-only, no secret from the environment or a URI in the state dir,
the logs or the command's output, and the state dir private to its owner."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from s3server import moto_server

from facefleet.errors import FacefleetError, InputError, ModelError, OutputError
from facefleet.jobs.submit import build_request, check_output_dir
from facefleet.media import storage
from facefleet.media.decode import decode_range
from facefleet.media.probe import probe_video
from facefleet.models.manifest import WEIGHTS_DIR, get_model
from facefleet.models.session import create_session
from facefleet.models.store import ModelStore
from facefleet.samples import SampleSpec

FACEFLEET = [sys.executable, "-m", "facefleet"]
SRC = Path(__file__).resolve().parents[1] / "facefleet"
SMALL = SampleSpec(width=320, height=180, frames=24, gop=8)
SECRET = "s3cr3t/Value+Never-Shown-0123456789abcdef"  # '/' and '+' as in real AWS secret keys


# ---- models -------------------------------------------------------------------------------


def test_model_file_changed_after_its_check_is_refused_at_load(tmp_path):
    """The bytes handed to onnxruntime are the bytes hashed: a file swapped between the
    store's check and the load is refused, not loaded."""
    spec = get_model("blazeface_short_128")
    models = tmp_path / "models"
    models.mkdir()
    (models / spec.file).write_bytes((WEIGHTS_DIR / spec.file).read_bytes())
    resolved = ModelStore(models).locate(spec)
    assert resolved.verified_by == "manifest"
    data = bytearray(resolved.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    resolved.path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"sha256 .*expected {spec.sha256}"):
        create_session(resolved, provider="cpu")


# Modules that read model files, job files and job requests: nothing in them may run code
# that comes with the data.
DATA_READERS = ["models/store.py", "models/session.py", "models/manifest.py", "jobs/submit.py", "jobs/store.py", "jobs/spec.py"]
UNSAFE = re.compile(r"\bpickle\b|\bmarshal\b|\bdill\b|torch\.load|yaml\.load\(|\beval\(|\bexec\(|allow_pickle\s*=\s*True|register_custom_ops_library")


@pytest.mark.parametrize("module", DATA_READERS)
def test_model_and_job_readers_never_deserialize_code(module):
    text = (SRC / module).read_text()
    assert not UNSAFE.findall(text), f"{module}: {UNSAFE.findall(text)}"


# ---- outputs under the output root --------------------------------------------------------


def test_output_root_refuses_climbing_out_absolute_paths_and_links_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "projects").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)  # a directory link leading out of the root
    (root / "projects" / "up").symlink_to("../..")  # a relative one
    (root / "inside").symlink_to(root / "projects")  # a link that stays inside is fine
    for output, reason in [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        (str(outside), "absolute"),
        ("escape", "outside the output root"),
        ("escape/deeper/dir", "outside the output root"),
        ("projects/up/outside", "outside the output root"),
        ("s3://bucket/out/", "under the output root"),
    ]:
        with pytest.raises(OutputError, match=re.escape(reason)):
            check_output_dir(output, str(root))
    assert check_output_dir("inside/run1", str(root)) == str(root / "projects" / "run1")
    assert check_output_dir("new/dir", str(root)) == str(root / "new" / "dir")
    assert check_output_dir("", str(root)) == str(root)
    linked_root = tmp_path / "root-link"
    linked_root.symlink_to(root)  # the root itself may be a link
    assert check_output_dir("out", str(linked_root)) == str(root / "out")


def test_submit_with_an_output_root_pairs_inputs_with_resolved_outputs(sample_factory, tmp_path):
    video, _ = sample_factory(SMALL)
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to(root / "real")
    request = build_request([str(video)], "link/out", {}, output_root=str(root))
    assert [out for _, out in request.inputs] == [str(root / "real" / "out" / video.name)]
    (root / "away").symlink_to(tmp_path)
    with pytest.raises(OutputError, match="outside the output root"):
        build_request([str(video)], "away/out", {}, output_root=str(root))
    assert not (tmp_path / "out").exists()


# ---- inputs are opened read-only ----------------------------------------------------------


def open_modes(path: Path) -> list[int]:
    """Access modes (os.O_RDONLY / O_WRONLY / O_RDWR) of this process's open descriptors of `path`."""
    modes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                flags = next(l for l in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if l.startswith("flags:"))
                modes.append(int(flags.split()[1], 8) & os.O_ACCMODE)
        except (FileNotFoundError, StopIteration):
            continue  # closed meanwhile
    return modes


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="reads /proc/self/fdinfo")
def test_inputs_are_opened_read_only(sample_factory):
    """Checked on the open descriptors themselves, so it holds for root too (for whom a
    0444 file would be writable)."""
    video, _ = sample_factory(SMALL)
    video = video.resolve()
    info = probe_video(str(video))
    frames = decode_range(str(video), info.frame_pts[0], info.frame_pts[4], info.frame_pts[0])
    next(frames)
    decoding = open_modes(video)
    frames.close()
    with storage.open_binary(str(video)) as f:
        f.read(16)
        reading = open_modes(video)
    assert decoding and reading, "the input was not open while read"
    assert set(decoding) == set(reading) == {os.O_RDONLY}


# ---- credentials never stored or shown ----------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/in.mp4",
        f"s3://{SECRET.replace('/', '')}@bucket/videos/",  # a token alone (with '/', it would be a key)
        f"gs://token:{SECRET}@bucket/in.mp4",
        f"hdfs://user:{SECRET}@namenode:8020/in.mp4",
    ],
)
def test_uris_with_credentials_are_refused_without_showing_them(uri, tmp_path):
    assert storage.has_credentials(uri)
    with pytest.raises(InputError) as err:
        storage.parse(uri)
    assert "credentials in a URI are not accepted" in str(err.value)
    secret = SECRET if SECRET in uri else SECRET.replace("/", "")
    assert secret not in str(err.value) and secret not in err.value.uri and "***@" in str(err.value)
    with pytest.raises(InputError) as err:
        storage.expand_inputs([uri], frozenset({".mp4"}))
    assert secret not in str(err.value)
    with pytest.raises(OutputError) as out_err:
        check_output_dir(uri.rsplit("/", 1)[0] + "/", None)
    assert secret not in str(out_err.value) and "credentials" in str(out_err.value)
    assert secret not in storage.redact(f"reading {uri} failed")


def test_uris_that_only_look_like_credentials_are_kept():
    for uri in ["s3://bucket/user@example.com.mp4", "hdfs://etl@namenode:8020/in.mp4", "hdfs://nn:8020/a@b.mp4"]:
        assert not storage.has_credentials(uri), uri
        storage.parse(uri)


def test_endpoint_with_credentials_is_refused_without_showing_them():
    for url in [f"http://key:{SECRET}@127.0.0.1:9000", f"https://{SECRET}@minio.example"]:
        with pytest.raises(FacefleetError) as err:
            storage.parse_endpoint(url, "AWS_ENDPOINT_URL")
        assert "credentials in the endpoint URL" in str(err.value) and SECRET not in str(err.value)


def test_submit_refuses_a_uri_with_credentials_and_queues_nothing(tmp_path):
    state = tmp_path / "state"
    uri = f"s3://AKIAEXAMPLE:{SECRET}@bucket/in.mp4"
    result = subprocess.run(
        [*FACEFLEET, "submit", uri, "-o", str(tmp_path / "out"), "--state-dir", str(state), "--wait", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "credentials in a URI are not accepted" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not any(p.is_file() for p in state.rglob("*")) if state.exists() else True


def files_holding(directory: Path, secret: str) -> list[str]:
    """Files under `directory` whose bytes hold `secret` (SQLite pages, WAL, JSON, Parquet...)."""
    needle = secret.encode()
    return [str(p) for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


def test_a_served_s3_job_keeps_its_credentials_out_of_the_state_dir_and_output(moto, sample_factory, tmp_path):
    """A job from S3 to S3, run by `facefleet serve` with the credentials in its environment:
    the secret key (and the access key id) appear nowhere in the state dir (SQLite store
    with its WAL, inbox, live.json, the job's report data), the outputs or the commands' output."""
    import pyarrow.fs as pafs

    video, _ = sample_factory(SMALL)
    admin = pafs.S3FileSystem(
        access_key=moto.access_key, secret_key=moto.secret_key, region=moto.region,
        endpoint_override=f"{moto.host}:{moto.port}", scheme="http", allow_bucket_creation=True,
    )
    admin.create_dir("secrets-test")
    with admin.open_output_stream("secrets-test/in/clip.mp4") as out:
        out.write(video.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("FACEFLEET_")}
    env.update(moto.environ())
    state = tmp_path / "state"
    common = ["--state-dir", str(state)]
    submitted = subprocess.run(
        [*FACEFLEET, "submit", "s3://secrets-test/in/clip.mp4", "-o", "s3://secrets-test/out/", "--chunk-frames", "8", *common, "--wait", "0"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    served = subprocess.run(
        [*FACEFLEET, "serve", *common, "--until-idle", "--gpu-backend", "simulated", "--workers", "1"],
        capture_output=True, text=True, timeout=280, env=env,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    assert "secrets-test/out/clip.mp4" in admin.get_file_info(pafs.FileSelector("secrets-test/out")).__repr__()
    shown = subprocess.run([*FACEFLEET, "list", *common], capture_output=True, text=True, timeout=60, env=env)
    assert "done" in shown.stdout, shown.stdout + shown.stderr
    assert (state / "facefleet.db").is_file() and (state / "jobs").is_dir()
    for secret in (moto.secret_key, moto.access_key):
        assert not files_holding(state, secret), secret
        for result in (submitted, served, shown):
            assert secret not in result.stdout + result.stderr
        with admin.open_input_stream("secrets-test/out/clip.mp4") as f:
            assert secret.encode() not in f.read()


# ---- the state dir ------------------------------------------------------------------------


def test_state_dir_and_its_files_are_private(tmp_path):
    from facefleet.jobs.store import Inbox, JobStore

    state = tmp_path / "state"
    old = os.umask(0o022)  # a usual umask: without care, 0755 directories and 0644 files
    try:
        with JobStore(state):
            pass
        Inbox(state).put("submit", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
