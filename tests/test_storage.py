"""Inputs and outputs as URIs: local paths, and S3 through a real moto server on loopback."""

from __future__ import annotations

import dataclasses
import re
import socket
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from localrun import decode_all, run_local, stream_facts
from s3server import free_port, moto_server, pid_alive

from facefleet.errors import FacefleetError, InputError, OutputError
from facefleet.cluster.chunk import run_chunk
from facefleet.jobs.runner import plan_job
from facefleet.jobs.spec import JobSpec
from facefleet.media.assemble import assemble
from facefleet.media import storage
from facefleet.media.decode import decode_range
from facefleet.media.image import NOT_AN_IMAGE, check_image, read_image
from facefleet.media.probe import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, probe_video
from facefleet.pipeline.processor import build_processor
from facefleet.samples import SampleSpec

MEDIA = frozenset(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
SMALL = SampleSpec(width=320, height=180, frames=45, gop=12)  # the one tests/test_media.py uses


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text and "Request ID" not in text, text
    return text


# --- the server ---------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses a TCP socket listens on at `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return found


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server
    assert not pid_alive(server.pid)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_moto_server_listens_on_loopback_only_and_is_stopped():
    with moto_server() as server:
        assert listening_addresses(server.port) == {"127.0.0.1"}
        assert pid_alive(server.pid)
    assert not pid_alive(server.pid)
    assert not listening_addresses(server.port)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


@dataclasses.dataclass
class Bucket:
    fs: pafs.S3FileSystem
    name: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes = b"x") -> str:
        with self.fs.open_output_stream(f"{self.name}/{key}") as out:
            out.write(data)
        return self.uri(key)

    def upload(self, path: Path, key: str) -> str:
        return self.put(key, Path(path).read_bytes())

    def keys(self) -> list[str]:
        entries = self.fs.get_file_info(pafs.FileSelector(self.name, recursive=True))
        return sorted(e.path.partition("/")[2] for e in entries if e.type == pafs.FileType.File)


@pytest.fixture
def s3(moto, monkeypatch) -> Bucket:
    """A fresh bucket on the moto server, with the environment pointing S3 clients at it."""
    for name in storage.S3_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.environ().items():
        monkeypatch.setenv(name, value)
    admin = pafs.S3FileSystem(
        access_key=moto.access_key, secret_key=moto.secret_key, region=moto.region,
        endpoint_override=f"{moto.host}:{moto.port}", scheme="http", allow_bucket_creation=True,
    )
    bucket = Bucket(admin, f"b-{uuid.uuid4().hex[:10]}")
    admin.create_dir(bucket.name)
    return bucket


@pytest.fixture
def closed_endpoint(monkeypatch) -> str:
    """The environment points S3 at a loopback port nobody listens on."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return url


# --- URIs (pure) ----------------------------------------------------------------------------


def test_uri_helpers():
    assert storage.is_remote("s3://b/k.mp4") and storage.is_remote("GS://b/k") and storage.is_remote("hdfs://nn:8020/x")
    assert not storage.is_remote("/data/x.mp4") and not storage.is_remote("file:///data/x.mp4")
    assert not storage.is_remote("C:\\videos\\x.mp4") and not storage.is_remote("simulated://10?ms=1")
    assert storage.parse("s3://b/dir/a?b#c.mp4") == storage.Location("s3", "b", "dir/a?b#c.mp4")
    assert storage.parse("s3://b/dir/x.mp4").fs_path == "b/dir/x.mp4"
    assert storage.parse("hdfs://nn:8020/dir/x.mp4").fs_path == "/dir/x.mp4"
    assert storage.parse("hdfs://nn:8020/d").uri_of("/d/x.mp4") == "hdfs://nn:8020/d/x.mp4"
    with pytest.raises(InputError, match="names no bucket"):
        storage.parse("s3:///key")
    assert storage.local_path("file:///data/my%20clip.mp4") == "/data/my clip.mp4"
    assert storage.local_path("file://localhost/data/x.mp4") == "/data/x.mp4"
    assert storage.local_path("data/x.mp4") == "data/x.mp4"
    assert storage.join("s3://b/out/", "x.mp4") == "s3://b/out/x.mp4" == storage.join("s3://b/out", "x.mp4")
    assert storage.join("s3://b", "x.mp4") == "s3://b/x.mp4"
    assert storage.join("out", "x.mp4") == str(Path("out") / "x.mp4")


@pytest.mark.parametrize(
    "pattern,path,expected",
    [
        ("*.mp4", "a.mp4", True),
        ("*.mp4", "d/a.mp4", False),  # '*' stays within one name
        ("d/*.mp4", "d/a.mp4", True),
        ("**/*.mp4", "a.mp4", True),  # '**' spans no name too
        ("**/*.mp4", "d/e/a.mp4", True),
        ("d/**", "d/e/a.mp4", True),
        ("clip?.mp4", "clip1.mp4", True),
        ("clip?.mp4", "clip10.mp4", False),
        ("clip[0-4].mp4", "clip3.mp4", True),
        ("*.MP4", "a.mp4", False),  # keys are case-sensitive
        ("*.mp4", ".hidden.mp4", False),
        (".*.mp4", ".hidden.mp4", True),
        ("**/*.mp4", ".cache/a.mp4", False),
    ],
)
def test_glob_match(pattern, path, expected):
    assert storage.glob_match(pattern, path) is expected


def test_endpoint_from_environment():
    assert storage.s3_options({}) == {}
    assert storage.s3_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "endpoint_override": "127.0.0.1:9000", "scheme": "http"}
    both = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.example.org/"}
    assert storage.s3_options(both) == {"endpoint_override": "minio.example.org", "scheme": "https"}
    assert storage.s3_options({**both, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}) == {}
    assert storage.s3_options({"AWS_ENDPOINT_URL": "minio:9000"})["scheme"] == "https"
    assert storage.s3_options({"AWS_CA_BUNDLE": "/etc/ca.pem", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
                               "AWS_ENDPOINT_URL": "http://a:1"}) == {"tls_ca_file_path": "/etc/ca.pem"}
    with pytest.raises(FacefleetError, match="AWS_ENDPOINT_URL=.ftp://host:21.: expected http://HOST:PORT"):
        storage.s3_options({"AWS_ENDPOINT_URL": "ftp://host:21"})


def test_failure_reasons_are_one_line():
    loc = storage.Location("s3", "bkt", "k.mp4")
    network = ("When getting information for key 'k.mp4' in bucket 'bkt': AWS Error NETWORK_CONNECTION during "
               "HeadObject operation: curlCode: 7, Could not connect to server; Details: Failed to connect")
    assert storage.failure_reason(network, loc, "http://h:1") == (
        "cannot reach the object store at http://h:1 (Could not connect to server);"
        " check the endpoint (AWS_ENDPOINT_URL) and the network")
    missing = "AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist (Request ID: X1)"
    assert storage.failure_reason(missing, loc, "http://h:1") == "bucket 'bkt' does not exist at http://h:1"
    assert "access denied" in storage.failure_reason("AWS Error ACCESS_DENIED during GetObject", loc, "AWS S3")
    other = "When reading 'k': AWS Error SLOW_DOWN during GetObject operation:\n please slow (Request ID: Q)"
    assert storage.failure_reason(other, loc, "AWS S3") == (
        "storage error at AWS S3: AWS Error SLOW_DOWN during GetObject operation: please slow")


# --- local inputs -----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    for name in ["b.mp4", "a.MOV", "notes.txt", "sub/c.mkv", "sub/deeper/d.jpg", ".hidden.mp4", ".cache/e.mp4", "empty/x.txt"]:
        path = tmp_path / "media" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "media"


def test_expand_local_directories_globs_and_files(tree):
    d = str(tree)
    assert storage.expand_inputs([d], MEDIA) == [f"{d}/a.MOV", f"{d}/b.mp4", f"{d}/sub/c.mkv", f"{d}/sub/deeper/d.jpg"]
    assert storage.expand_inputs([f"{d}/*.mp4"], MEDIA) == [f"{d}/b.mp4"]
    assert storage.expand_inputs([f"{d}/**/*.mkv"], MEDIA) == [f"{d}/sub/c.mkv"]
    assert storage.expand_inputs([f"{d}/su?"], MEDIA) == [f"{d}/sub/c.mkv", f"{d}/sub/deeper/d.jpg"]
    # a file named on its own is taken whatever its extension; duplicates go, order stays
    assert storage.expand_inputs([f"{d}/notes.txt", f"{d}/b.mp4", f"{d}/*.mp4", f"file://{d}/b.mp4"], MEDIA) == [
        f"{d}/notes.txt", f"{d}/b.mp4"]
    assert storage.expand_inputs([f"{d}/sub"], frozenset({"jpg"})) == [f"{d}/sub/deeper/d.jpg"]


@pytest.mark.parametrize(
    "item,reason",
    [
        ("missing.mp4", "file not found"),
        ("*.webm", "matches nothing"),
        ("*.txt", "matches no file with a media extension"),
        ("empty", "directory holds no file with a media extension"),
    ],
)
def test_expand_local_errors_name_the_item(tree, item, reason):
    with pytest.raises(InputError) as err:
        storage.expand_inputs([str(tree / "b.mp4"), str(tree / item)], MEDIA)
    assert one_line(err.value).startswith(f"{tree / item}: {reason}")


# --- object storage inputs ----------------------------------------------------------------------


def test_expand_prefixes_globs_and_single_objects(s3):
    for key in ["v/b.mp4", "v/a.mkv", "v/notes.txt", "v/sub/c.mp4", "v/.hidden.mp4", "v/.cache/d.mp4", "vx/e.mp4", "top.jpg"]:
        s3.put(key)
    u = s3.uri
    assert storage.expand_inputs([u("v/")], MEDIA) == [u("v/a.mkv"), u("v/b.mp4"), u("v/sub/c.mp4")]
    assert storage.expand_inputs([u("v")], MEDIA) == [u("v/a.mkv"), u("v/b.mp4"), u("v/sub/c.mp4")]  # a "directory"
    assert storage.expand_inputs([u()], MEDIA) == [u("top.jpg"), u("v/a.mkv"), u("v/b.mp4"), u("v/sub/c.mp4"), u("vx/e.mp4")]
    assert storage.expand_inputs([u("v/notes.txt")], MEDIA) == [u("v/notes.txt")]  # an object named: taken as is
    assert storage.expand_inputs([u("v/*.mp4")], MEDIA) == [u("v/b.mp4")]  # '*' does not cross '/'
    assert storage.expand_inputs([u("v/**/*.mp4")], MEDIA) == [u("v/b.mp4"), u("v/sub/c.mp4")]
    assert storage.expand_inputs([u("v*")], MEDIA) == [u("v/a.mkv"), u("v/b.mp4"), u("v/sub/c.mp4"), u("vx/e.mp4")]
    assert storage.expand_inputs([u("v/?.mkv"), u("v/a.mkv"), u("v/")], frozenset({".mkv"})) == [u("v/a.mkv")]


def test_expand_mixes_local_and_remote(s3, tree):
    uri = s3.put("in/x.mp4")
    assert storage.expand_inputs([str(tree / "b.mp4"), uri], MEDIA) == [str(tree / "b.mp4"), uri]


@pytest.mark.parametrize(
    "key,reason",
    [
        ("nothing.mp4", "file not found (no such object or prefix)"),
        ("v/*.webm", "matches no object with a media extension"),
        ("nowhere/", "no object with a media extension"),
        ("v/notes/", "no object with a media extension"),
    ],
)
def test_expand_remote_errors_name_the_item(s3, key, reason):
    s3.put("v/a.mp4")
    s3.put("v/notes/n.txt")
    with pytest.raises(InputError) as err:
        storage.expand_inputs([s3.uri("v/a.mp4"), s3.uri(key)], MEDIA)
    assert one_line(err.value).startswith(f"{s3.uri(key)}: {reason}")


@pytest.mark.parametrize("key", ["x.mp4", "dir/", "*.mp4", ""])
def test_missing_bucket_is_named_with_its_endpoint(s3, moto, key):
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/{key}"
    with pytest.raises(InputError) as err:
        storage.expand_inputs([uri], MEDIA)
    bucket = uri.split("/")[2]
    assert one_line(err.value) == f"{uri}: bucket '{bucket}' does not exist at {moto.url}"


@pytest.mark.parametrize("key", ["x.mp4", "dir/", "*.mp4"])
def test_unreachable_endpoint_is_one_line(closed_endpoint, key):
    uri = f"s3://bkt/{key}"
    with pytest.raises(InputError) as err:
        storage.expand_inputs([uri], MEDIA)
    assert one_line(err.value).startswith(f"{uri}: cannot reach the object store at {closed_endpoint} (")


def test_endpoint_variables_and_the_filesystem_cache(s3, moto, monkeypatch):
    uri = s3.put("k.mp4")
    fs, path = storage.filesystem(uri)
    assert path == f"{s3.name}/k.mp4" and isinstance(fs, pafs.S3FileSystem)
    assert storage.filesystem(s3.uri("other.mp4"))[0] is fs  # one client per bucket and endpoint
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL, and a changed environment gets a new client
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)
    assert storage.filesystem(uri)[0] is not fs
    assert storage.exists(uri) and not storage.exists(s3.uri("other.mp4"))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    with pytest.raises(InputError, match="cannot reach the object store"):
        storage.exists(uri)


# --- reading -------------------------------------------------------------------------------------


def test_read_bytes_and_open_input(s3, tmp_path):
    uri = s3.put("d/blob.bin", bytes(range(256)) * 10)
    assert storage.read_bytes(uri) == bytes(range(256)) * 10
    assert storage.read_bytes(uri, limit=4) == bytes([0, 1, 2, 3])
    with storage.open_input(uri) as f:
        assert f.seekable() and f.size() == 2560
        f.seek(2555)
        assert f.read() == bytes(range(251, 256))
    local = tmp_path / "a.bin"
    local.write_bytes(b"abc")
    with storage.open_input(str(local)) as source:
        assert source == str(local)
    assert storage.read_bytes(f"file://{local}") == b"abc"
    with pytest.raises(InputError, match="file not found"):
        storage.read_bytes(str(tmp_path / "missing.bin"))
    with pytest.raises(InputError, match="file not found"):
        storage.read_bytes(s3.uri("d/missing.bin"))
    with pytest.raises(InputError, match="is a directory"):
        storage.read_bytes(s3.uri("d"))


@pytest.fixture
def video_in_s3(s3, sample_factory):
    path, _ = sample_factory(SMALL)
    return path, s3.upload(path, "videos/clip one.mp4")


def test_probe_from_s3_equals_probe_of_the_local_file(video_in_s3):
    path, uri = video_in_s3
    local, remote = probe_video(str(path)), probe_video(uri)
    assert remote.uri == uri
    assert dataclasses.replace(remote, uri=local.uri) == local
    assert remote.frames == 45 and remote.keyframes[:4] == (0, 12, 24, 36) and remote.has_audio


@pytest.mark.parametrize("start,end", [(0, 5), (14, 30), (40, 45)])
def test_decoding_a_range_from_s3_equals_decoding_it_locally(video_in_s3, start, end):
    path, uri = video_in_s3
    info = probe_video(str(path))
    key = max(k for k in info.keyframes if k <= start)
    args = (info.frame_pts[start], info.frame_pts[end - 1], info.frame_pts[key])
    local, remote = list(decode_range(str(path), *args)), list(decode_range(uri, *args))
    assert [p for p, _ in remote] == [p for p, _ in local] == list(info.frame_pts[start:end])
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(remote, local))


def test_bad_remote_videos_are_refused_like_local_ones(s3, sample_factory, tmp_path):
    path, _ = sample_factory(SMALL)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    cases = {"cut.mp4": cut.read_bytes(), "empty.mp4": b"", "text.mp4": b"not a video at all\n" * 20}
    for name, content in cases.items():
        local = tmp_path / name
        local.write_bytes(content)
        uri = s3.put(f"bad/{name}", content)
        with pytest.raises(InputError) as remote_err:
            probe_video(uri)
        with pytest.raises(InputError) as local_err:
            probe_video(str(local))
        assert remote_err.value.reason == local_err.value.reason, name
        one_line(remote_err.value)
    with pytest.raises(InputError, match="file not found"):
        probe_video(s3.uri("bad/missing.mp4"))


def test_images_from_s3(s3, data_dir):
    uri = s3.upload(data_dir / "obama.jpg", "img/obama.jpg")
    check_image(uri)
    assert np.array_equal(read_image(uri).bgr, read_image(str(data_dir / "obama.jpg")).bgr)
    fake = s3.put("img/fake.png", b"plain text, not an image\n" * 10)
    with pytest.raises(InputError, match=re.escape(NOT_AN_IMAGE)):
        check_image(fake)
    with pytest.raises(InputError, match="file is empty"):
        check_image(s3.put("img/empty.png", b""))
    with pytest.raises(InputError, match="file not found"):
        read_image(s3.uri("img/missing.png"))


def test_a_job_reads_its_input_from_s3(video_in_s3, tmp_path):
    """Plan, chunk decode and assembly (which copies the audio from the input) all read
    the object: the output has the frames, timestamps and audio of the same job on the
    local file (pixels are not compared: two local runs differ slightly too)."""
    path, uri = video_in_s3
    outs = {}
    for name, source in (("local", str(path)), ("s3", uri)):
        outs[name] = tmp_path / f"{name}.mp4"
        run_local(JobSpec(job_id=name, input_uri=source, output_uri=str(outs[name]), chunk_frames=16))
    assert stream_facts(outs["s3"]) == stream_facts(outs["local"])
    assert decode_all(outs["s3"])[0] == decode_all(outs["local"])[0] == list(probe_video(uri).frame_pts)


def test_assembly_reads_segments_from_s3(s3, sample_factory, tmp_path):
    """Segments written on other nodes can sit in a bucket: assembling from their URIs
    gives what assembling the local files gives."""
    path, _ = sample_factory(SMALL)
    spec = JobSpec(job_id="seg", input_uri=str(path), output_uri=str(tmp_path / "out.mp4"), chunk_frames=16)
    job = plan_job(spec)
    job.workdir.mkdir(parents=True)
    processor = build_processor(spec.pipeline)
    for task in job.tasks:
        run_chunk(task, processor)
    local = [Path(t.segment_uri) for t in job.tasks]
    remote = [s3.upload(p, f"work/{p.name}") for p in local]
    assert len(remote) > 1
    assemble(job.info, local, tmp_path / "from-local.mp4")
    assert assemble(job.info, remote, tmp_path / "from-s3.mp4") == 45
    assert stream_facts(tmp_path / "from-s3.mp4") == stream_facts(tmp_path / "from-local.mp4")
    (pts_a, frames_a), (pts_b, frames_b) = decode_all(tmp_path / "from-s3.mp4"), decode_all(tmp_path / "from-local.mp4")
    assert pts_a == pts_b and all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b))


# --- writing ---------------------------------------------------------------------------------------


def test_output_file_uploads_and_removes_its_temporary(s3, tmp_path):
    uri = s3.uri("out/result.mp4")
    with storage.output_file(uri, scratch=tmp_path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4"
        tmp.write_bytes(b"finished video")
        assert not storage.exists(uri)  # nothing visible before the block ends
    assert storage.read_bytes(uri) == b"finished video"
    assert list(tmp_path.iterdir()) == []
    with s3.fs.open_input_stream(f"{s3.name}/out/result.mp4") as f:
        assert f.metadata()["Content-Type"] == b"video/mp4"


def test_output_file_publishes_nothing_on_error(s3, tmp_path):
    uri = s3.uri("out/result.mp4")
    with pytest.raises(RuntimeError):
        with storage.output_file(uri, scratch=tmp_path) as tmp:
            tmp.write_bytes(b"half a video")
            raise RuntimeError("encoder failed")
    assert s3.keys() == [] and list(tmp_path.iterdir()) == []


def test_output_file_upload_failing_midway_leaves_no_object(s3, tmp_path, monkeypatch):
    def broken_copy(source, out):
        out.write(source.read(5))
        raise OSError("disk read error")

    monkeypatch.setattr(storage, "_copy", broken_copy)
    with pytest.raises(OSError, match="disk read error"):
        with storage.output_file(s3.uri("out/x.mp4"), scratch=tmp_path) as tmp:
            tmp.write_bytes(b"0123456789")
    assert s3.keys() == [] and list(tmp_path.iterdir()) == []


def test_output_file_to_a_missing_bucket(s3, moto, tmp_path):
    with pytest.raises(OutputError) as err:
        with storage.output_file("s3://no-such-bucket-out/x.mp4", scratch=tmp_path) as tmp:
            tmp.write_bytes(b"data")
    assert "bucket 'no-such-bucket-out' does not exist at " + moto.url in one_line(err.value)
    assert list(tmp_path.iterdir()) == []


def test_local_output_file_is_atomic(tmp_path):
    target = tmp_path / "new" / "out.mp4"
    with pytest.raises(RuntimeError):
        with storage.output_file(str(target)) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError
    assert list((tmp_path / "new").iterdir()) == []
    with storage.output_file(str(target)) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".mp4"
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list((tmp_path / "new").iterdir()) == [target]


def test_check_output_dir_in_object_storage(s3, moto):
    storage.check_output_dir(s3.uri("results/"))
    storage.check_output_dir(s3.uri())
    s3.put("results/taken")
    with pytest.raises(OutputError, match="is an object, not a directory"):
        storage.check_output_dir(s3.uri("results/taken"))
    with pytest.raises(OutputError) as err:
        storage.check_output_dir("s3://no-such-bucket-dir/out/")
    assert one_line(err.value) == f"s3://no-such-bucket-dir/out/: bucket 'no-such-bucket-dir' does not exist at {moto.url}"


def test_check_output_dir_unreachable(closed_endpoint):
    with pytest.raises(OutputError) as err:
        storage.check_output_dir("s3://bkt/results/")
    assert one_line(err.value).startswith(f"s3://bkt/results/: cannot reach the object store at {closed_endpoint} (")


def test_check_output_dir_local(tmp_path):
    storage.check_output_dir(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        storage.check_output_dir(str(tmp_path / "file"))
    with pytest.raises(OutputError, match="cannot create or write"):
        storage.check_output_dir(str(tmp_path / "file" / "sub"))
