"""Model registry: manifest, lookup order, sha256 checks, lock-file pinning, import, fetch,
signature check at load, and `facefleet models`.

No network: fetch runs against an HTTP server on 127.0.0.1 started here, or an injected
opener. FaceFusion's model files are not available on these machines, so the tests build
tiny ONNX graphs (one Identity node) with the same input names and shapes and save them
under FaceFusion's file names. HOME and FACEFLEET_MODELS point into tmp dirs: the real
~/.cache is never read or written.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from facefleet.errors import ModelError
from facefleet.models.manifest import (
    FACEFUSION_ASSETS,
    MODELS,
    WEIGHTS_DIR,
    get_model,
    license_notice,
    model_for_file,
)
from facefleet.models.session import create_session
from facefleet.models.store import ENV_VAR, LOCK_FILE, ModelStore

SHIPPED = ("centerface", "yunet", "facemesh_468", "blazeface_short_128")
FACEFUSION = (
    "yolo_face", "retinaface", "scrfd", "yunet_2023mar", "2dfan4", "fan_68_5", "arcface_w600k_r50",
    "gfpgan_1.4", "codeformer", "restoreformer_plus_plus", "gpen_bfr_512",
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """HOME in a tmp dir and no FACEFLEET_MODELS: ~/.cache/facefleet/models is a tmp path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return home


def tiny_onnx(path: Path, inputs=(("input", [1, 3, 640, 640]),)) -> Path:
    """A valid ONNX model: each input passed through an Identity node."""
    import onnx
    from onnx import TensorProto, helper

    graph_inputs, outputs, nodes = [], [], []
    for i, (name, shape) in enumerate(inputs):
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node("Identity", [name], [f"out{i}"]))
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", graph_inputs, outputs), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def flipped_copy(src: Path, dst: Path, at: int = 1000) -> Path:
    data = bytearray(src.read_bytes())
    data[at] ^= 0xFF
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# ---- manifest ---------------------------------------------------------------------------


def test_manifest_declares_every_model_with_its_conventions():
    assert set(MODELS) == set(SHIPPED) | set(FACEFUSION)
    assert len({s.file for s in MODELS.values()}) == len(MODELS)  # import recognizes files by name
    for spec in MODELS.values():
        assert spec.kind in ("detector", "landmarker", "recognizer", "enhancer")
        assert spec.layout in ("NCHW", "NHWC", "NPC") and spec.channels in ("RGB", "BGR")
        assert spec.license and spec.input_name
        if spec.kind in ("detector", "landmarker"):
            assert spec.decoder in ("centerface", "yunet", "scrfd", "retinaface", "yolo_face", "blazeface",
                                    "facemesh", "2dfan4", "fan_68_5"), spec.name
        if spec.kind in ("recognizer", "enhancer"):
            assert spec.template in ("arcface_112_v1", "arcface_112_v2", "arcface_128", "ffhq_512"), spec.name
        assert model_for_file(spec.file) is spec
    for name in SHIPPED:  # shipped: pinned to the bytes in the package
        spec = MODELS[name]
        assert spec.shipped and spec.url is None
        assert sha(WEIGHTS_DIR / spec.file) == spec.sha256
    for name in FACEFUSION:  # no published SHA-256: pinned on import, never invented
        spec = MODELS[name]
        assert spec.sha256 is None and not spec.shipped
        assert spec.url == f"{FACEFUSION_ASSETS}/models-3.0.0/{spec.file}" or name == "yunet_2023mar"
    assert MODELS["yunet_2023mar"].url == f"{FACEFUSION_ASSETS}/models-3.4.0/yunet_2023_mar.onnx"
    assert MODELS["yunet"].file != MODELS["yunet_2023mar"].file
    arcface = MODELS["arcface_w600k_r50"]
    assert (arcface.input_size, arcface.template, arcface.mean, arcface.std) == (
        (112, 112), "arcface_112_v2", (127.5,) * 3, (127.5,) * 3)
    assert MODELS["codeformer"].extra_inputs == (("weight", 0.5),)


def test_non_commercial_models_print_a_one_line_notice():
    non_commercial = {n for n, s in MODELS.items() if not s.commercial_use}
    assert non_commercial == {"retinaface", "scrfd", "arcface_w600k_r50", "codeformer", "gpen_bfr_512"}
    notice = license_notice(get_model("codeformer"))
    assert notice and "\n" not in notice and "codeformer" in notice and "S-Lab" in notice
    assert "not for commercial use" in notice
    assert license_notice(get_model("centerface")) is None


# ---- lookup -----------------------------------------------------------------------------


def test_lookup_order_explicit_then_env_then_home_then_shipped(tmp_path, isolated_home, monkeypatch):
    spec = get_model("blazeface_short_128")
    shipped = WEIGHTS_DIR / spec.file
    home_dir = isolated_home / ".cache" / "facefleet" / "models"
    env_dir, explicit = tmp_path / "env", tmp_path / "explicit"

    assert ModelStore().locate(spec).path == shipped
    for directory in (home_dir, env_dir, explicit):
        directory.mkdir(parents=True)
        (directory / spec.file).write_bytes(shipped.read_bytes())
    assert ModelStore().locate(spec).path == home_dir / spec.file
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert ModelStore().locate(spec).path == env_dir / spec.file
    store = ModelStore(explicit)
    assert store.locate(spec).path == explicit / spec.file
    assert store.search_dirs == (explicit, env_dir, home_dir)
    assert store.models_dir == explicit
    assert store.candidates(spec)[-1] == shipped
    # a model not shipped is never looked for in the package
    assert all(p.parent != WEIGHTS_DIR for p in store.candidates(get_model("gfpgan_1.4")))


def test_missing_model_names_it_every_place_and_both_commands(tmp_path, isolated_home):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError) as info:
        store.locate(get_model("arcface_w600k_r50"))
    msg = str(info.value)
    assert "\n" not in msg and "model arcface_w600k_r50" in msg
    assert str(tmp_path / "models" / "arcface_w600k_r50.onnx") in msg
    assert str(isolated_home / ".cache" / "facefleet" / "models" / "arcface_w600k_r50.onnx") in msg
    assert "`facefleet models fetch arcface_w600k_r50`" in msg and "`facefleet models import PATH`" in msg
    with pytest.raises(ModelError, match="not found; looked in"):
        create_session(get_model("arcface_w600k_r50"), provider="cpu", store=store)
    with pytest.raises(ModelError, match="known models"):
        store.resolve("no_such_model")


def test_wrong_hash_is_refused_not_skipped(tmp_path):
    spec = get_model("blazeface_short_128")
    models = tmp_path / "models"
    flipped_copy(WEIGHTS_DIR / spec.file, models / spec.file)
    store = ModelStore(models)
    with pytest.raises(ModelError, match=f"sha256 .*expected {spec.sha256}.*refused"):
        store.locate(spec)  # the shipped copy further down the path is not used instead
    with pytest.raises(ModelError, match="sha256"):
        create_session(spec, provider="cpu", store=store)
    [result] = store.verify(["blazeface_short_128"])
    assert result.status == "bad" and "sha256" in result.message


# ---- pinning, trust, import -------------------------------------------------------------


def test_import_pins_unpinned_model_and_later_tampering_is_refused(tmp_path):
    models = tmp_path / "models"
    downloads = tmp_path / "downloads"
    source = tiny_onnx(downloads / "yunet_2023_mar.onnx")
    spec = get_model("yunet_2023mar")

    models.mkdir()
    (models / spec.file).write_bytes(source.read_bytes())  # dropped in by hand: no record yet
    store = ModelStore(models)
    with pytest.raises(ModelError, match=rf"no pinned sha256.*facefleet models import {models / spec.file}"):
        store.locate(spec)

    [result] = store.import_files([source])
    assert (result.status, result.name, result.path) == ("imported", "yunet_2023mar", models / spec.file)
    record = json.loads((models / LOCK_FILE).read_text())["models"]["yunet_2023mar"]
    assert record["sha256"] == sha(source) == result.sha256
    assert record["size"] == source.stat().st_size and record["file"] == spec.file
    assert record["source"] == str(source.resolve()) and record["recorded"]

    resolved = store.locate(spec)
    assert (resolved.verified_by, resolved.sha256) == ("lock", sha(source))
    session = create_session(spec, provider="cpu", store=store)
    assert (session.verified_by, session.sha256, session.path) == ("lock", sha(source), models / spec.file)

    tiny_onnx(models / spec.file, inputs=(("input", [1, 3, 320, 320]),))  # replaced behind our back
    with pytest.raises(ModelError, match="was recorded when it was imported.*the file changed: refused"):
        store.locate(spec)
    with pytest.raises(ModelError, match="file changed"):
        create_session(spec, provider="cpu", store=store)
    # importing the file in place is how a user re-pins a replacement on purpose
    [again] = store.import_files([models / spec.file])
    assert again.status == "imported" and store.locate(spec).sha256 == sha(models / spec.file)


def test_trust_override_loads_a_custom_file_and_says_so(tmp_path):
    custom = tiny_onnx(tmp_path / "elsewhere" / "my_detector.onnx")
    spec = get_model("yunet_2023mar")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError, match="no pinned sha256"):
        store.resolve(custom, spec=spec)
    with pytest.raises(ModelError, match="cannot tell which model"):
        store.resolve(custom, trust=True)
    resolved = store.resolve(custom, trust=True, spec=spec)
    assert resolved.trusted and resolved.verified_by == "trusted" and resolved.sha256 == sha(custom)
    session = create_session(resolved, provider="cpu")
    assert session.trusted and session.path == custom
    # a trusted path that is the published shipped file is simply manifest-verified
    shipped = store.resolve(WEIGHTS_DIR / "centerface.onnx", trust=True)
    assert shipped.verified_by == "manifest"


def test_import_of_a_directory_with_known_unknown_and_bad_files(tmp_path):
    assets = tmp_path / "facefusion" / ".assets" / "models"
    tiny_onnx(assets / "yunet_2023_mar.onnx")
    (assets / "yunet_2023_mar.hash").write_text("1a2b3c4d")
    (assets / "inswapper_128.onnx").write_bytes(b"not ours")
    (assets / "fan_68_5.onnx").write_text("<html>rate limited</html>")  # an error page, saved
    flipped_copy(WEIGHTS_DIR / "centerface.onnx", assets / "centerface.onnx")
    (assets / "blazeface_short_128.onnx").write_bytes((WEIGHTS_DIR / "blazeface_short_128.onnx").read_bytes())

    models = tmp_path / "models"
    results = {r.source.name: r for r in ModelStore(models).import_files([assets])}
    assert {n: r.status for n, r in results.items()} == {
        "yunet_2023_mar.onnx": "imported",
        "blazeface_short_128.onnx": "imported",
        "yunet_2023_mar.hash": "unknown",
        "inswapper_128.onnx": "unknown",
        "fan_68_5.onnx": "refused",
        "centerface.onnx": "refused",
    }
    assert "not an ONNX model" in results["fan_68_5.onnx"].message
    assert "sha256" in results["centerface.onnx"].message
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["yunet_2023_mar.onnx", "blazeface_short_128.onnx", LOCK_FILE])
    assert set(json.loads((models / LOCK_FILE).read_text())["models"]) == {"yunet_2023mar"}  # pinned ones need no record
    status = {r.name: r.status for r in ModelStore(models).verify()}
    assert status["yunet_2023mar"] == status["blazeface_short_128"] == status["centerface"] == "ok"
    assert status["gfpgan_1.4"] == "missing"
    [gone] = ModelStore(models).import_files([tmp_path / "nope" / "codeformer.onnx"])
    assert gone.status == "refused" and "does not exist" in gone.message


# ---- signature check at load ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, inputs, expected, actual",
    [
        ("arcface_w600k_r50", (("data", [1, 3, 112, 112]),), "input[?,3,112,112]", "data[1,3,112,112]"),
        ("arcface_w600k_r50", (("input", [1, 3, 128, 128]),), "input[?,3,112,112]", "input[1,3,128,128]"),
        ("gfpgan_1.4", (("input", [1, 512, 512]),), "input[?,3,512,512]", "input[1,512,512]"),
        ("codeformer", (("input", [1, 3, 512, 512]),), "input[?,3,512,512], weight[?]", "input[1,3,512,512]"),
    ],
)
def test_model_whose_inputs_do_not_match_the_manifest_is_refused_at_load(tmp_path, name, inputs, expected, actual):
    spec = get_model(name)
    store = ModelStore(tmp_path / "models")
    assert store.import_files([tiny_onnx(tmp_path / "dl" / spec.file, inputs)])[0].status == "imported"
    with pytest.raises(ModelError) as info:
        create_session(spec, provider="cpu", store=store)
    msg = str(info.value)
    assert f"expected inputs {expected}, the file has {actual}" in msg and "refused" in msg and "\n" not in msg


def test_matching_signature_loads(tmp_path):
    store = ModelStore(tmp_path / "models")
    tiny_onnx(tmp_path / "dl" / "codeformer.onnx", (("input", [1, 3, 512, 512]), ("weight", [1])))
    tiny_onnx(tmp_path / "dl" / "fan_68_5.onnx", (("input", [1, 5, 2]),))
    tiny_onnx(tmp_path / "dl" / "scrfd_2.5g.onnx", (("input", [1, 3, "h", "w"]),))
    assert [r.status for r in store.import_files([tmp_path / "dl"])] == ["imported"] * 3
    for name in ("codeformer", "fan_68_5", "scrfd"):
        session = create_session(get_model(name), provider="cpu", store=store)
        assert session.verified_by == "lock"
    assert create_session(get_model("codeformer"), store=store).license_notice
    # shipped models still load as before, found in the package
    session = create_session(get_model("centerface"), provider="cpu")
    assert session.verified_by == "manifest" and session.path == WEIGHTS_DIR / "centerface.onnx"


# ---- fetch ------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1; yields (directory, base url); stopped at the end."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_fetch_downloads_checks_and_pins(tmp_path, http_server):
    served, base = http_server
    tiny_onnx(served / "yunet_2023_mar.onnx")
    models = tmp_path / "models"
    store = ModelStore(models)
    seen = []
    resolved = store.fetch("yunet_2023mar", url=f"{base}/yunet_2023_mar.onnx", progress=lambda d, t: seen.append((d, t)))
    assert resolved.path == models / "yunet_2023_mar.onnx" and resolved.verified_by == "lock"
    assert sha(resolved.path) == sha(served / "yunet_2023_mar.onnx") == resolved.sha256
    assert seen[-1] == (resolved.path.stat().st_size, resolved.path.stat().st_size)
    record = store.read_lock(models)["yunet_2023mar"]
    assert record["source"] == f"{base}/yunet_2023_mar.onnx" and record["sha256"] == resolved.sha256
    assert store.locate(get_model("yunet_2023mar")).verified_by == "lock"

    with pytest.raises(ModelError, match="cannot download gfpgan_1.4 from .*HTTP 404"):
        store.fetch("gfpgan_1.4", url=f"{base}/missing.onnx")
    assert not (models / "gfpgan_1.4.onnx").exists() and leftovers(models) == []


class _Response(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_fetch_uses_the_published_url_and_refuses_bad_bytes(tmp_path):
    calls = []
    good = tiny_onnx(tmp_path / "gfpgan.onnx", (("input", [1, 3, 512, 512]),)).read_bytes()

    def opener(url, timeout):
        calls.append((url, timeout))
        return _Response(payload)

    store = ModelStore(tmp_path / "models")
    payload = good
    store.fetch("gfpgan_1.4", urlopen=opener)
    assert calls[0][0] == f"{FACEFUSION_ASSETS}/models-3.0.0/gfpgan_1.4.onnx" and calls[0][1] > 0
    assert create_session(get_model("gfpgan_1.4"), provider="cpu", store=store).verified_by == "lock"

    payload = (WEIGHTS_DIR / "blazeface_short_128.onnx").read_bytes()[:-1]  # truncated pinned model
    with pytest.raises(ModelError, match="expected .* refused"):
        store.fetch("blazeface_short_128", url="http://mirror.invalid/blazeface_short_128.onnx", urlopen=opener)
    assert not (store.models_dir / "blazeface_short_128.onnx").exists()
    assert leftovers(store.models_dir) == []
    with pytest.raises(ModelError, match="no published download address"):
        store.fetch("blazeface_short_128", urlopen=opener)


# ---- CLI --------------------------------------------------------------------------------


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(HOME=str(home), COLUMNS="200", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "facefleet", "models", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_models_list_import_verify(tmp_path, isolated_home):
    models = tmp_path / "models"
    proc = run_cli("list", "--models-dir", str(models), home=isolated_home)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == set(MODELS)
    assert "shipped" in rows["centerface"] and "MIT" in rows["centerface"]
    assert "missing" in rows["arcface_w600k_r50"] and "Non-Commercial" in rows["arcface_w600k_r50"]
    assert "*" in rows["codeformer"] and "*" not in rows["gfpgan_1.4"]

    tiny_onnx(tmp_path / "dl" / "arcface_w600k_r50.onnx", (("input", [1, 3, 112, 112]),))
    (tmp_path / "dl" / "readme.txt").write_text("hi")
    proc = run_cli("import", str(tmp_path / "dl"), "--models-dir", str(models), home=isolated_home)
    assert proc.returncode == 0, proc.stderr
    assert "imported arcface_w600k_r50" in proc.stdout and "skipped 1 file(s)" in proc.stdout

    proc = run_cli("list", "--models-dir", str(models), home=isolated_home)
    row = next(l for l in proc.stdout.splitlines() if " arcface_w600k_r50 " in l)
    assert "present" in row
    proc = run_cli("verify", "--models-dir", str(models), home=isolated_home)
    assert proc.returncode == 0 and "ok       arcface_w600k_r50" in proc.stdout

    flipped_copy(models / "arcface_w600k_r50.onnx", models / "arcface_w600k_r50.onnx", at=20)
    proc = run_cli("verify", "--models-dir", str(models), home=isolated_home)
    assert proc.returncode == 1 and "BAD      arcface_w600k_r50" in proc.stdout
    proc = run_cli("fetch", "nope", "--models-dir", str(models), home=isolated_home)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model 'nope'; known models:")
    assert "Traceback" not in proc.stderr
    assert not (isolated_home / ".cache").exists()
