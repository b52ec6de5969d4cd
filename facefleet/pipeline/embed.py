"""Face embeddings: ArcFace-compatible recognizers, face distance, reference-face selection.

A recognizer takes aligned face crops (FaceFusion's convention for its ArcFace models:
template arcface_112_v2, 112x112, RGB, (x - 127.5) / 127.5, NCHW; the ModelSpec says
which) and returns one embedding per face, here L2-normalised. Two faces are compared by
cosine distance, 1 - dot product of the normalised embeddings, as FaceFusion does: 0 for
the same direction, 1 for orthogonal, 2 for opposite. Reference selection keeps the faces
closer than a distance to a reference image's face (FaceFusion's
--reference-face-distance, default 0.3).
"""

from __future__ import annotations

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.models.session import ModelSession
from facefleet.pipeline.align import run_batched, to_model_input, warp_face

DEFAULT_TEMPLATE = "arcface_112_v2"
DEFAULT_SIZE = (112, 112)
REFERENCE_FACE_DISTANCE = 0.3
EMBED_BATCH = 32


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Recognizer:
    """Runs an ArcFace-compatible recognizer over aligned crops, in batches."""

    def __init__(self, model: ModelSession, batch_size: int = EMBED_BATCH):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        spec = model.spec
        self.template = spec.template or DEFAULT_TEMPLATE
        self.size = tuple(spec.input_size or DEFAULT_SIZE)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """uint8 BGR crops (N, h, w, 3) at the model's size -> float32 (N, D), L2-normalised."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:3] != (self.size[1], self.size[0]):
            raise ValueError(f"crops must be (N, {self.size[1]}, {self.size[0]}, 3), got {crops.shape}")
        spec = self.model.spec
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = to_model_input(crops[start : start + self.batch_size], spec)
            embedding = run_batched(self.model, spec.input_name, batch, pad_to=self.batch_size)
            out.append(l2_normalize(np.asarray(embedding).reshape(len(batch), -1)))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(out)

    def embed_faces(self, frames: list[np.ndarray], landmarks_per_frame: list[np.ndarray]) -> list[np.ndarray]:
        """Embeddings of every face of every frame: one (n_faces, D) array per frame.

        Faces are aligned and run in batches of at most `batch_size` whatever the count,
        so memory stays bounded. A face whose landmarks admit no alignment (coinciding or
        not finite) gets a zero embedding, at distance 1 from everything.
        """
        if len(frames) != len(landmarks_per_frame):
            raise ValueError("one landmarks array per frame is needed")
        faces = [(f, lm) for f, lms in enumerate(landmarks_per_frame) for lm in np.asarray(lms).reshape(-1, 5, 2)]
        rows: list[np.ndarray | None] = [None] * len(faces)
        for start in range(0, len(faces), self.batch_size):
            index, crops = [], []
            for k in range(start, min(start + self.batch_size, len(faces))):
                f, lm = faces[k]
                try:
                    crops.append(warp_face(frames[f], lm, self.template, self.size)[0])
                except ValueError:
                    continue
                index.append(k)
            if crops:
                for k, embedding in zip(index, self.embed(np.stack(crops))):
                    rows[k] = embedding
        dim = next((r.shape[0] for r in rows if r is not None), 0)
        filled = [r if r is not None else np.zeros(dim, np.float32) for r in rows]
        out, i = [], 0
        for lms in landmarks_per_frame:
            n = len(np.asarray(lms).reshape(-1, 5, 2))
            out.append(np.stack(filled[i : i + n]) if n else np.zeros((0, dim), np.float32))
            i += n
        return out


def face_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine distance 1 - a.b of normalised embeddings.

    (D,) and (D,) -> float; (N, D) and (D,) -> (N,); (N, D) and (M, D) -> (N, M).
    """
    a = l2_normalize(a)
    b = l2_normalize(b)
    distance = 1.0 - a @ b.T
    return float(distance) if np.ndim(distance) == 0 else distance


def select_reference(
    embeddings_per_frame: list[np.ndarray], reference: np.ndarray, max_distance: float = REFERENCE_FACE_DISTANCE
) -> list[np.ndarray]:
    """Per frame, a boolean mask of the faces closer than `max_distance` to a reference.

    `reference` is one embedding (D,) or several (R, D); a face is kept when its nearest
    reference is strictly closer than `max_distance`.
    """
    if not 0 <= max_distance <= 2:
        raise ValueError("--reference-face-distance must be between 0 and 2")
    refs = np.atleast_2d(np.asarray(reference, dtype=np.float32))
    masks = []
    for embeddings in embeddings_per_frame:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(embeddings) == 0:
            masks.append(np.zeros(0, dtype=bool))
            continue
        nearest = np.asarray(face_distance(embeddings, refs)).reshape(len(embeddings), -1).min(axis=1)
        masks.append(nearest < max_distance)
    return masks


def face_order(landmarks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """Indices of faces from largest to smallest (box area, else landmark spread)."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    if boxes is not None and len(boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        size = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    else:
        size = np.prod(np.ptp(landmarks, axis=1), axis=1) if len(landmarks) else np.zeros(0)
    return np.argsort(-size, kind="stable")


def reference_embedding(
    recognizer: Recognizer,
    image: np.ndarray,
    landmarks: np.ndarray,
    boxes: np.ndarray | None = None,
    position: int = 0,
) -> np.ndarray:
    """Embedding of the reference face in a reference image: the `position`-th largest."""
    landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    if len(landmarks) == 0:
        raise FacefleetError("the reference image has no face that the detector finds; choose an image with a clear, frontal face")
    if not 0 <= position < len(landmarks):
        raise FacefleetError(f"--reference-face-position {position} is out of range: the reference image has {len(landmarks)} face(s)")
    index = face_order(landmarks, boxes)[position]
    embedding = recognizer.embed_faces([image], [landmarks[index : index + 1]])[0][0]
    if not np.any(embedding):
        raise FacefleetError("the reference face cannot be aligned (its landmarks coincide); choose another reference image")
    return embedding
