#!/usr/bin/env python3
"""A restoration-class ONNX model for throughput work: RANDOM WEIGHTS, SPEED ONLY.

This builds a U-Net that takes and returns [N, 3, 512, 512] (the GFPGAN / CodeFormer face
enhancer signature: input `input`, output `output`, values in [-1, 1]) and whose
convolution compute matches GFPGAN v1.4's. Its weights are random (seeded): it restores
nothing, and its output must never be presented as enhancement. It exists so the
enhancer stage's batching, memory and GPU throughput can be measured without shipping
(or downloading) the real model.

Compute target: no published GFLOPs figure for GFPGAN v1.4 was found, so it is counted
here from the published architecture (`gfpgan_v14_macs`): TencentARC/GFPGAN
gfpgan/archs/gfpganv1_clean_arch.py + stylegan2_clean_arch.py, built as GFPGANer builds
v1.4 (GFPGANv1Clean, out_size=512, channel_multiplier=2, narrow=1, sft_half=True,
different_w=True, input_is_latent=True): every Conv2d / modulated conv / Linear of one
512x512 forward pass, 1 MAC = 1 multiply-add, GFLOPs = 2 x GMACs; element-wise ops,
interpolation and the weight modulation/demodulation (per-sample, O(weights)) are left
out. That gives 197.8 GMACs = 395.6 GFLOPs per face. The model built here is counted
from its own ONNX graph (`count_macs`), not from the formula that designed it.

    python bench/restoration_model.py                 # build bench/work/restoration_unet_512.onnx, print GFLOPs
    python bench/restoration_model.py --run           # + faces/s at batch 1, 2, 4, 8 (CUDA if usable, else CPU)
    python bench/restoration_model.py --run --provider cpu --batches 1,2 --repeat 2
    python bench/restoration_model.py --run --stage    # + the whole enhancer stage on a 1080p frame

`--stage` times facefleet.pipeline.enhance.Enhancer end to end (align, normalise, model,
de-normalise, paste-back) on one 1920x1080 frame with --stage-faces faces, at each batch
size: what the stage costs around the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "bench" / "work" / "restoration_unet_512.onnx"
SIZE = 512
# channels per level, 512 px down to 8 px; chosen so the counted MACs land on GFPGAN v1.4's
WIDTHS = (64, 128, 208, 320, 512, 512, 512)
SEED = 20260501


# --- the compute target -----------------------------------------------------------------


def gfpgan_v14_macs() -> dict[str, int]:
    """MACs of one 512x512 forward pass of GFPGANv1Clean as GFPGAN v1.4 configures it."""

    def conv(cin: int, cout: int, k: int, side: int) -> int:
        return cin * cout * k * k * side * side

    decoder = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}  # 32*cm*narrow... (cm=2)
    unet = {side: c // 2 for side, c in decoder.items()}  # unet_narrow = narrow * 0.5
    parts: dict[str, int] = {}
    parts["unet_first"] = conv(3, unet[512], 1, 512)
    total, cin = 0, unet[512]
    for side in (256, 128, 64, 32, 16, 8, 4):  # ResBlock down: conv1 at 2*side, conv2 + 1x1 skip at side
        cout = unet[side]
        total += conv(cin, cin, 3, 2 * side) + conv(cin, cout, 3, side) + conv(cin, cout, 1, side)
        cin = cout
    parts["unet_down"] = total
    parts["unet_final_conv"] = conv(unet[4], unet[4], 3, 4)
    parts["final_linear"] = unet[4] * 16 * (9 * 2 - 2) * 512  # different_w: 16 latents of 512
    up = sft = rgb = 0
    cin = unet[4]
    for side in (8, 16, 32, 64, 128, 256, 512):  # ResBlock up, SFT scale+shift (2 convs each), toRGB
        cout = unet[side]
        up += conv(cin, cin, 3, side // 2) + conv(cin, cout, 3, side) + conv(cin, cout, 1, side)
        sft += 2 * (conv(cout, cout, 3, side) + conv(cout, cout, 3, side))  # sft_half: out = cout
        rgb += conv(cout, 3, 1, side)
        cin = cout
    parts["unet_up"], parts["sft_conditions"], parts["unet_to_rgb"] = up, sft, rgb
    style = conv(512, 512, 3, 4) + conv(512, 3, 1, 4)
    modulation = 512 * 512 + 512 * 512  # style_conv1, to_rgb1: Linear(512 -> in_channels)
    cin = 512
    for side in (8, 16, 32, 64, 128, 256, 512):  # upsampling conv, conv, ToRGB
        cout = decoder[side]
        style += conv(cin, cout, 3, side) + conv(cout, cout, 3, side) + conv(cout, 3, 1, side)
        modulation += 512 * (cin + cout + cout)
        cin = cout
    parts["stylegan2_decoder"] = style
    parts["style_modulation"] = modulation
    return parts


# --- the model --------------------------------------------------------------------------


def build_unet(widths: tuple[int, ...] = WIDTHS, size: int = SIZE, seed: int = SEED):
    """U-Net: 3x3 conv pairs per level, strided-conv down, nearest-up + conv, skip concat."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = iter(range(10_000))

    def conv(x: str, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> str:
        i = next(counter)
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)) * 0.7).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"))
        out = f"conv{i}"
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [out], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        )
        if not act:
            return out
        nodes.append(helper.make_node("LeakyRelu", [out], [out + "_a"], alpha=0.2))
        return out + "_a"

    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    x = conv(conv("input", 3, widths[0]), widths[0], widths[0])
    skips = [x]
    for level in range(1, len(widths)):
        x = conv(x, widths[level - 1], widths[level], stride=2)
        x = conv(x, widths[level], widths[level])
        skips.append(x)
    x = conv(x, widths[-1], widths[-1])  # bottleneck
    for level in range(len(widths) - 2, -1, -1):
        up = f"up{level}"
        nodes.append(helper.make_node("Resize", [x, "", "up_scales"], [up], mode="nearest"))
        x = conv(up, widths[level + 1], widths[level])
        cat = f"cat{level}"
        nodes.append(helper.make_node("Concat", [x, skips[level]], [cat], axis=1))
        x = conv(cat, 2 * widths[level], widths[level])
        x = conv(x, widths[level], widths[level])
    x = conv(x, widths[0], 3, k=1, act=False)
    nodes.append(helper.make_node("Tanh", [x], ["output"]))
    graph = helper.make_graph(
        nodes,
        "restoration_unet_random_weights",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="facefleet-bench")
    model.ir_version = 8
    model.doc_string = "RANDOM WEIGHTS: a speed-only stand-in with GFPGAN v1.4's compute; it enhances nothing."
    onnx.checker.check_model(model)
    return model


# --- counting -----------------------------------------------------------------------------


def count_macs(model, batch: int = 1) -> dict[str, int]:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes, per op type.

    Shapes come from ONNX shape inference with the batch dim fixed to `batch`; a conv
    costs (output elements) x (input channels / group) x kernel area.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        dim = value.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].ClearField("dim_param")
            dim[0].dim_value = batch
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            # weights are (cout, cin/group, k...) for Conv, (cin, cout/group, k...) for
            # ConvTranspose: the group split is already in the second dim
            weight = shapes[node.input[1]]
            per_element = weight[1] * int(np.prod(weight[2:]))
            if node.op_type == "Conv":  # each output element sums cin/group x kernel products
                cost = int(np.prod(shapes[node.output[0]])) * per_element
            else:  # each input element feeds cout/group x kernel outputs
                cost = int(np.prod(shapes[node.input[0]])) * per_element
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            cost = int(np.prod(shapes[node.output[0]])) * a[-1]
        else:
            continue
        macs[node.op_type] = macs.get(node.op_type, 0) + cost
    return macs


def parameters(model) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)


# --- running ------------------------------------------------------------------------------


def measure(path: Path, provider: str, batches: list[int], repeat: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    from facefleet.models.session import CUDA, choose_provider

    requested = choose_provider(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    providers = [(CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), "CPUExecutionProvider"] if requested == CUDA else ["CPUExecutionProvider"]
    if requested == CUDA and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:
            pass
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    used = session.get_providers()[0]
    print(f"provider asked {requested}, in use {used}")
    rng = np.random.default_rng(0)
    results = []
    for batch in batches:
        x = rng.uniform(-1, 1, (batch, 3, SIZE, SIZE)).astype(np.float32)
        session.run(None, {"input": x})  # warm-up (cuDNN algorithm search, allocations)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - t0)
        best, median = min(times), float(np.median(times))
        row = {"batch": batch, "provider": used, "best_s": best, "median_s": median, "faces_per_s": batch / median}
        results.append(row)
        print(f"batch {batch:2d}: median {median * 1000:9.1f} ms  best {best * 1000:9.1f} ms  {batch / median:8.2f} faces/s")
    return results


def measure_stage(path: Path, provider: str, batches: list[int], faces: int, repeat: int) -> list[dict]:
    """The whole enhancer stage (align, normalise, model, paste-back) on one 1080p frame."""
    import hashlib

    from facefleet.models.session import create_session
    from facefleet.pipeline.align import template_points
    from facefleet.pipeline.enhance import Enhancer

    spec = bench_spec(path, hashlib.sha256(path.read_bytes()).hexdigest())
    model = create_session(spec, provider=provider, path=path)
    frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    cols = int(np.ceil(np.sqrt(faces * 16 / 9)))
    side = 1920 // cols
    landmarks = np.stack(
        [template_points("ffhq_512", 512) / 512 * side * 0.9 + [(i % cols) * side, (i // cols) * side] for i in range(faces)]
    )
    results = []
    for batch in batches:
        enhancer = Enhancer(model, batch_size=batch)
        enhancer.enhance([frame.copy()], [landmarks])  # warm-up
        times = []
        for _ in range(repeat):
            work = frame.copy()
            t0 = time.perf_counter()
            enhancer.enhance([work], [landmarks])
            times.append(time.perf_counter() - t0)
        median = float(np.median(times))
        row = {"stage_batch": batch, "faces": faces, "provider": model.provider, "median_s": median, "faces_per_s": faces / median}
        results.append(row)
        print(f"enhancer stage, batch {batch:2d}, {faces} faces/frame: {median * 1000:8.1f} ms/frame  {faces / median:8.2f} faces/s")
    return results


def bench_spec(path: Path, sha256: str):
    """A GFPGAN-like ModelSpec for the random-weight model (ffhq_512, RGB, [-1, 1])."""
    from facefleet.models.manifest import ModelSpec

    return ModelSpec(
        name="restoration_unet_random",
        kind="enhancer",
        file=path.name,
        sha256=sha256,
        license="none (random weights, speed only)",
        source="bench/restoration_model.py",
        input_name="input",
        channels="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(SIZE, SIZE),
        template="ffhq_512",
        output_names=("output",),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--run", action="store_true", help="measure throughput with onnxruntime")
    parser.add_argument("--provider", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--stage", action="store_true", help="with --run: also time the whole enhancer stage")
    parser.add_argument("--stage-faces", type=int, default=16, help="faces in the 1080p frame for --stage")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    target = gfpgan_v14_macs()
    target_macs = sum(target.values())
    model = build_unet()
    macs = count_macs(model)
    total = sum(macs.values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    onnx.save(model, str(args.out))
    print("GFPGAN v1.4 (GFPGANv1Clean, counted from the published architecture), per 512x512 face:")
    for name, value in target.items():
        print(f"  {name:20s} {value / 1e9:8.2f} GMACs")
    print(f"  {'total':20s} {target_macs / 1e9:8.2f} GMACs = {2 * target_macs / 1e9:.1f} GFLOPs")
    print(f"this model ({args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}), RANDOM WEIGHTS, speed only:")
    print(f"  widths {WIDTHS}, {parameters(model) / 1e6:.1f} M parameters")
    print(f"  counted from the graph: {total / 1e9:.2f} GMACs = {2 * total / 1e9:.1f} GFLOPs per face ({total / target_macs:.1%} of the target)")
    report = {
        "model": str(args.out),
        "random_weights": True,
        "target": "GFPGAN v1.4 (GFPGANv1Clean, out 512, channel_multiplier 2), counted from the architecture",
        "target_gmacs": target_macs / 1e9,
        "model_gmacs": total / 1e9,
        "model_gflops": 2 * total / 1e9,
        "parameters": parameters(model),
    }
    if args.run:
        batches = [int(b) for b in args.batches.split(",") if b]
        report["runs"] = measure(args.out, args.provider, batches, args.repeat, args.threads)
        for row in report["runs"]:
            print(f"batch {row['batch']:2d}: {row['faces_per_s'] * 2 * total / 1e12:.2f} TFLOP/s effective")
        if args.stage:
            report["stage"] = measure_stage(args.out, args.provider, batches, args.stage_faces, args.repeat)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
