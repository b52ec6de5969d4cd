"""Face enhancement with GFPGAN-compatible and CodeFormer-compatible restoration models.

Every face is aligned to the model's template and size (ffhq_512 at 512x512 for GFPGAN
and CodeFormer as FaceFusion publishes them), normalised as the ModelSpec says (RGB,
x / 255 -> [-1, 1], NCHW for those), run through the model in batches, de-normalised,
and pasted back through FaceFusion's box mask, blended with the original by
`--face-enhancer-blend` (percent, default 80). CodeFormer takes a second input, `weight`
(fidelity, a float64 of shape [1] in FaceFusion's ONNX export); any scalar inputs the
spec lists in `extra_inputs` are fed the same way, in the dtype the model declares.

Faces of all frames of a batch are pooled and run `batch_size` at a time, so memory stays
bounded whatever the number of faces. Every face is cropped from the frame as it was
before enhancement, so the result does not depend on batch_size, also where faces overlap.
"""

from __future__ import annotations

import numpy as np

from facefleet.models.session import ModelSession
from facefleet.pipeline.align import align_matrix, box_mask, crop_face, from_model_output, paste_back, run_batched, to_model_input

DEFAULT_TEMPLATE = "ffhq_512"
DEFAULT_SIZE = (512, 512)
ENHANCE_BATCH = 8
DEFAULT_WEIGHT = 0.5  # FaceFusion 3's --face-enhancer-weight default (FaceFusion 2 fed CodeFormer 1.0)

_ORT_DTYPES = {"tensor(double)": np.float64, "tensor(float)": np.float32, "tensor(float16)": np.float16}


class Enhancer:
    """Restores every face of a batch of frames in place."""

    def __init__(
        self,
        model: ModelSession,
        blend: int = 80,
        mask_blur: float = 0.3,
        mask_padding: tuple[float, float, float, float] = (0, 0, 0, 0),
        weight: float | None = None,
        batch_size: int = ENHANCE_BATCH,
    ):
        if not 0 <= blend <= 100:
            raise ValueError("--face-enhancer-blend must be between 0 and 100")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if weight is not None and not 0 <= weight <= 1:
            raise ValueError("--face-enhancer-weight must be between 0 and 1")
        self.model = model
        self.blend = blend
        self.batch_size = batch_size
        spec = model.spec
        self.template = spec.template or DEFAULT_TEMPLATE
        self.size = tuple(spec.input_size or DEFAULT_SIZE)
        self.mask = box_mask(self.size, mask_blur, tuple(mask_padding))
        self.extra_feeds = self._extra_feeds(weight)

    def _extra_feeds(self, weight: float | None) -> dict[str, np.ndarray]:
        """Scalar inputs besides the image: the spec's extra_inputs, `weight` overriding its own.

        A model with a `weight` input gets, in order: the `weight` argument, the spec's
        value, DEFAULT_WEIGHT.
        """
        values = dict(self.model.spec.extra_inputs)
        declared = {inp.name: inp for inp in self.model.session.get_inputs()}
        if weight is not None:
            values["weight"] = weight
        elif "weight" in declared and "weight" not in values:
            values["weight"] = DEFAULT_WEIGHT
        feeds = {}
        for name, value in values.items():
            inp = declared.get(name)
            if inp is None:
                continue  # this file does not take it (e.g. a weight for a GFPGAN)
            dtype = _ORT_DTYPES.get(inp.type, np.float32)
            shape = () if len(inp.shape) == 0 else (1,) * len(inp.shape)
            feeds[name] = np.full(shape, value, dtype=dtype)
        return feeds

    def enhance(
        self,
        frames: list[np.ndarray],
        landmarks_per_frame: list[np.ndarray],
        selected: list[np.ndarray] | None = None,
    ) -> None:
        """Enhance the faces of `frames` (uint8 BGR, modified in place).

        `landmarks_per_frame[i]` holds frame i's faces as (n, 5, 2) landmarks; `selected`
        (optional, e.g. from embed.select_reference) masks which of them to process. Faces
        whose landmarks admit no alignment are left alone. A frame with no faces, or
        blend 0, is not touched.
        """
        if len(frames) != len(landmarks_per_frame):
            raise ValueError("one landmarks array per frame is needed")
        if self.blend == 0:
            return
        faces: list[tuple[int, np.ndarray]] = []
        for f, lms in enumerate(landmarks_per_frame):
            lms = np.asarray(lms, dtype=np.float64).reshape(-1, 5, 2)
            keep = np.ones(len(lms), bool) if selected is None else np.asarray(selected[f], bool)
            for lm in lms[keep]:
                try:
                    matrix = align_matrix(lm, self.template, self.size)
                except ValueError:
                    continue
                faces.append((f, matrix))
        snapshot: dict[int, np.ndarray] = {}  # frames whose faces span two batches: the original
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start : start + self.batch_size]
            crops = np.stack([crop_face(snapshot.get(f, frames[f]), matrix, self.size) for f, matrix in chunk])
            restored = self._run(crops)
            last = chunk[-1][0]
            following = faces[start + self.batch_size][0] if start + self.batch_size < len(faces) else None
            if following == last and last not in snapshot:
                snapshot[last] = frames[last].copy()  # later faces of this frame crop from the original
            for k in [f for f in snapshot if f != following]:
                del snapshot[k]
            for (f, matrix), face in zip(chunk, restored):
                paste_back(frames[f], face, matrix, self.mask, blend=self.blend / 100)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        spec = self.model.spec
        output = run_batched(self.model, spec.input_name, to_model_input(crops, spec), self.extra_feeds, self.batch_size)
        return from_model_output(output, spec)
