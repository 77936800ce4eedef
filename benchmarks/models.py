"""Trained models and unseen data for the benchmarks (needs the test extra: torch, scikit-learn).

    python benchmarks/models.py [--rebuild]     builds everything into benchmarks/.cache/ and prints quality

Every model is trained on TRAIN_IMAGES of scikit-learn's 1,797 digits (8x8 images shipped inside
scikit-learn; no download); the other images form the *pool*: real data none of the models saw in
training, which the benchmarks split into calibration / held-out / test. Everything is seeded, so a
rebuild gives the same models and pools on the same versions.

Each builder returns (onnx path, pool) where pool is a dict of numpy arrays keyed by model input
name, plus `labels` where they mean something, plus, for `digit_yolo`, the ground-truth boxes:

- digits_mlp:      MLP 64-256-128-64-10 ReLU (nn.Linear, Gemm), input `input` [N, 64], output `logits` [N, 10].
- digits_cnn:      Conv-BN-ReLU x2, MaxPool, Conv-BN-ReLU, Flatten, Linear-ReLU-Linear; input `image`
                   [N, 1, 8, 8], output `logits` [N, 10].
- digit_detector:  "is it an 8 or a 9" (about 20 % positives), MLP 64-128-64-1 with a Sigmoid: input `input`
                   [N, 64], output `score` [N, 1]; labels 0/1 (int64).
- digit_embedder:  MLP 64-256-128-32 trained with a 10-class head that is not exported: output `embedding`
                   [N, 32] (the raw penultimate layer); judged by cosine, so its pool has no labels.
- digit_yolo:      canvases 32x32 with 1-3 digits (drawn 8x8 or 16x16) at random places; a small CNN
                   (stride 4, an 8x8 grid, one anchor per cell) whose head is decoded in the graph to
                   `output0` [N, 4 + 10, 64]: box centre x, y, width, height in pixels, then per-class
                   sigmoid scores per cell (the YOLOv8 layout). The pool's canvases are drawn only from
                   pool digits; `gt_boxes` [N, 3, 4] (x1, y1, x2, y2) and `gt_classes` [N, 3] (-1 = none).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SEED = 0
TRAIN_IMAGES = 597  # the other 1,200 digits are the pool
DETECTOR_POSITIVES = (8, 9)
CANVAS = 32
STRIDE = 4
MAX_OBJECTS = 3
YOLO_TRAIN_CANVASES = 4000
YOLO_POOL_CANVASES = 1200
SCORE_THRESHOLD = 0.25
IOU_MATCH = 0.5

MODELS = ("digits_mlp", "digits_cnn", "digit_detector", "digit_embedder", "digit_yolo")


# ---------------------------------------------------------------------------------------------- data

def digits_split():
    """(x_train, y_train, x_pool, y_pool): float32 [n, 64] in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    train, pool = order[:TRAIN_IMAGES], order[TRAIN_IMAGES:]
    return x[train], y[train], x[pool], y[pool]


def canvases(images: np.ndarray, classes: np.ndarray, n: int, seed: int):
    """n canvases [n, 1, 32, 32] with 1-3 of `images` each, their boxes [n, 3, 4] and classes [n, 3].

    Digits are drawn at scale 1 (8x8) or 2 (16x16) at random places; two digits never share a grid
    cell and overlap by at most a little (IoU < 0.1), pixels combine by max.
    """
    rng = np.random.default_rng(seed)
    pictures = images.reshape(-1, 8, 8)
    out = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    boxes = np.zeros((n, MAX_OBJECTS, 4), np.float32)
    labels = np.full((n, MAX_OBJECTS), -1, np.int64)
    for i in range(n):
        placed: list[tuple] = []
        for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
            for _attempt in range(30):
                k = int(rng.integers(len(pictures)))
                scale = int(rng.integers(1, 3))
                size = 8 * scale
                x0, y0 = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
                box = (x0, y0, x0 + size, y0 + size)
                cell = (int((y0 + size / 2) // STRIDE), int((x0 + size / 2) // STRIDE))
                if all(c != cell and iou(np.array(box, float), np.array(b, float)) < 0.1 for b, c, _ in placed):
                    placed.append((box, cell, k))
                    patch = np.kron(pictures[k], np.ones((scale, scale), np.float32))
                    region = out[i, 0, y0:y0 + size, x0:x0 + size]
                    np.maximum(region, patch, out=region)
                    break
        for j, (box, _, k) in enumerate(placed):
            boxes[i, j] = box
            labels[i, j] = classes[k]
    return out, boxes, labels


# ------------------------------------------------------------------------------------- detection math

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (x1, y1, x2, y2), broadcasting over leading axes."""
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda z: np.prod(np.clip(z[..., 2:] - z[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def detections(output0: np.ndarray, threshold: float = SCORE_THRESHOLD, nms_iou: float = 0.5) -> list:
    """Per image, (boxes [k, 4] x1y1x2y2, classes [k], scores [k]) from `output0` [N, 4 + C, anchors].

    Each anchor votes for its best class; anchors at or above `threshold` survive greedy
    per-class non-maximum suppression.
    """
    result = []
    for out in output0:
        cx, cy, w, h = out[:4]
        scores = out[4:]
        cls = scores.argmax(0)
        best = scores.max(0)
        keep = np.flatnonzero(best >= threshold)
        keep = keep[np.argsort(-best[keep], kind="stable")]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        chosen: list[int] = []
        for a in keep:
            if all(cls[b] != cls[a] or iou(boxes[a], boxes[b]) < nms_iou for b in chosen):
                chosen.append(int(a))
        result.append((boxes[chosen], cls[chosen], best[chosen]))
    return result


def match_counts(found: list, wanted: list, iou_min: float = IOU_MATCH) -> tuple[int, int, int]:
    """(matched, found, wanted): greedy one-to-one matching by score, same class and IoU >= iou_min.

    `found` and `wanted` are per-image (boxes, classes[, scores]) as `detections` returns; recall
    is matched / wanted and precision matched / found.
    """
    matched = n_found = n_wanted = 0
    for f, w in zip(found, wanted):
        f_boxes, f_cls = f[0], f[1]
        w_boxes, w_cls = w[0], w[1]
        n_found += len(f_cls)
        n_wanted += len(w_cls)
        used = np.zeros(len(w_cls), bool)
        for box, c in zip(f_boxes, f_cls):  # detections arrive sorted by score
            if not len(w_cls):
                break
            overlap = iou(box[None], w_boxes)
            overlap[(w_cls != c) | used] = -1
            j = int(overlap.argmax())
            if overlap[j] >= iou_min:
                used[j] = True
                matched += 1
    return matched, n_found, n_wanted


def ground_truth(pool: dict) -> list:
    """The pool's ground truth as per-image (boxes, classes), for `match_counts`."""
    out = []
    for boxes, classes in zip(pool["gt_boxes"], pool["gt_classes"]):
        real = classes >= 0
        out.append((boxes[real], classes[real]))
    return out


# -------------------------------------------------------------------------------------------- training

def _fit(model, inputs, targets, loss_fn, *, epochs: int, lr: float, batch: int = 64, one_cycle: bool = False):
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(inputs) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps) if one_cycle else None
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(inputs), generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(model(inputs[idx]), targets[idx]).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    return model.eval()


def _mlp(sizes, *, last_relu=False):
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2 or last_relu:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _export(model, example, path: Path, input_name: str, output_name: str) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {0: "batch"}})
    tmp.replace(path)


def _run(path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _cached(name: str, rebuild: bool):
    path = CACHE / f"{name}.onnx"
    return path, (path.exists() and (CACHE / f"{name}.pool.npz").exists() and not rebuild)


def _save_pool(name: str, pool: dict) -> None:
    np.savez(CACHE / f"{name}.pool.npz", **pool)


def _load_pool(name: str) -> dict:
    with np.load(CACHE / f"{name}.pool.npz") as f:
        return {k: f[k] for k in f.files}


def build_digits_mlp(rebuild: bool = False):
    path, ready = _cached("digits_mlp", rebuild)
    if not ready:
        import torch

        x, y, xp, yp = digits_split()
        torch.manual_seed(SEED)
        net = _fit(_mlp([64, 256, 128, 64, 10]), torch.from_numpy(x), torch.from_numpy(y),
                   torch.nn.functional.cross_entropy, epochs=150, lr=1e-3)
        _export(net, torch.from_numpy(xp[:2]), path, "input", "logits")
        _save_pool("digits_mlp", {"input": xp, "labels": yp})
    return path, _load_pool("digits_mlp")


def build_digits_cnn(rebuild: bool = False):
    path, ready = _cached("digits_cnn", rebuild)
    if not ready:
        import torch

        x, y, xp, yp = digits_split()
        torch.manual_seed(SEED)

        def block(c_in, c_out):
            return [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]

        net = torch.nn.Sequential(*block(1, 16), *block(16, 32), torch.nn.MaxPool2d(2), *block(32, 32),
                                  torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 10))
        net = _fit(net, torch.from_numpy(x.reshape(-1, 1, 8, 8)), torch.from_numpy(y),
                   torch.nn.functional.cross_entropy, epochs=40, lr=2e-3)
        images = xp.reshape(-1, 1, 8, 8)
        _export(net, torch.from_numpy(images[:2]), path, "image", "logits")
        _save_pool("digits_cnn", {"image": images, "labels": yp})
    return path, _load_pool("digits_cnn")


def build_digit_detector(rebuild: bool = False):
    path, ready = _cached("digit_detector", rebuild)
    if not ready:
        import torch

        x, y, xp, yp = digits_split()
        target = np.isin(y, DETECTOR_POSITIVES).astype(np.float32)[:, None]
        torch.manual_seed(SEED)
        logits = _fit(_mlp([64, 128, 64, 1]), torch.from_numpy(x), torch.from_numpy(target),
                      torch.nn.functional.binary_cross_entropy_with_logits, epochs=150, lr=1e-3)
        net = torch.nn.Sequential(logits, torch.nn.Sigmoid()).eval()
        _export(net, torch.from_numpy(xp[:2]), path, "input", "score")
        _save_pool("digit_detector", {"input": xp, "labels": np.isin(yp, DETECTOR_POSITIVES).astype(np.int64)})
    return path, _load_pool("digit_detector")


def build_digit_embedder(rebuild: bool = False):
    path, ready = _cached("digit_embedder", rebuild)
    if not ready:
        import torch

        x, y, xp, yp = digits_split()
        torch.manual_seed(SEED)
        body = _mlp([64, 256, 128, 32])
        classifier = torch.nn.Sequential(body, torch.nn.ReLU(), torch.nn.Linear(32, 10))
        _fit(classifier, torch.from_numpy(x), torch.from_numpy(y), torch.nn.functional.cross_entropy,
             epochs=150, lr=1e-3)
        _export(body.eval(), torch.from_numpy(xp[:2]), path, "input", "embedding")
        _save_pool("digit_embedder", {"input": xp})
        np.save(CACHE / "digit_embedder.pool_classes.npy", yp)  # for the quality figure only
    return path, _load_pool("digit_embedder")


def _yolo_net(width: int = 1):
    import torch

    class TinyYolo(torch.nn.Module):
        """Backbone at stride 4, a 1x1 head, boxes decoded to pixels in the graph (YOLOv8 layout);
        `width` multiplies every backbone width (12, 24, 32, 32, 32)."""

        def __init__(self, classes: int = 10):
            super().__init__()

            def block(c_in, c_out):
                return [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]

            a, b, c = 12 * width, 24 * width, 32 * width
            self.backbone = torch.nn.Sequential(
                *block(1, a), torch.nn.MaxPool2d(2), *block(a, b), torch.nn.MaxPool2d(2),
                *block(b, c), *block(c, c), torch.nn.Conv2d(c, c, 1), torch.nn.ReLU())
            self.head = torch.nn.Conv2d(c, 4 + classes, 1)
            with torch.no_grad():  # class scores start near their prior (about 1 %): no early collapse to 0
                self.head.bias[4:] = -4.0
            cells = CANVAS // STRIDE
            gy, gx = torch.meshgrid(torch.arange(cells, dtype=torch.float32),
                                    torch.arange(cells, dtype=torch.float32), indexing="ij")
            self.register_buffer("grid", torch.stack([gx, gy]).reshape(1, 2, cells * cells))

        def raw(self, x):
            return self.head(self.backbone(x)).flatten(2)  # [N, 4 + C, cells^2]

        def forward(self, x):
            r = self.raw(x)
            centre = (torch.sigmoid(r[:, 0:2]) + self.grid) * STRIDE
            size = torch.sigmoid(r[:, 2:4]) * CANVAS
            return torch.cat([centre, size, torch.sigmoid(r[:, 4:])], dim=1)

    return TinyYolo()


def _yolo_targets(boxes, classes):
    """Per cell: which cell holds an object, its box target (cell offset, size / canvas) and class."""
    cells = CANVAS // STRIDE
    n = len(boxes)
    has = np.zeros((n, cells * cells), bool)
    box_t = np.zeros((n, 4, cells * cells), np.float32)
    cls_t = np.zeros((n, 10, cells * cells), np.float32)
    for i in range(n):
        for b, c in zip(boxes[i], classes[i]):
            if c < 0:
                continue
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            gx, gy = int(cx // STRIDE), int(cy // STRIDE)
            k = gy * cells + gx
            has[i, k] = True
            box_t[i, :, k] = (cx / STRIDE - gx, cy / STRIDE - gy, (b[2] - b[0]) / CANVAS, (b[3] - b[1]) / CANVAS)
            cls_t[i, c, k] = 1.0
    return has, box_t, cls_t


def build_digit_yolo(rebuild: bool = False, epochs: int = 10, width: int = 1, name: str = "digit_yolo"):
    path, ready = _cached(name, rebuild)
    if not ready:
        import torch

        x, y, xp, yp = digits_split()
        train_img, train_boxes, train_cls = canvases(x, y, YOLO_TRAIN_CANVASES, seed=SEED + 1)
        pool_img, pool_boxes, pool_cls = canvases(xp, yp, YOLO_POOL_CANVASES, seed=SEED + 2)
        has, box_t, cls_t = (torch.from_numpy(a) for a in _yolo_targets(train_boxes, train_cls))
        torch.manual_seed(SEED)
        net = _yolo_net(width)
        targets = torch.arange(len(has))

        def loss_fn(raw, idx):
            h = has[idx]
            box_loss = torch.nn.functional.smooth_l1_loss(
                torch.sigmoid(raw[:, :4]).permute(0, 2, 1)[h], box_t[idx].permute(0, 2, 1)[h], beta=0.05)
            cls_loss = torch.nn.functional.binary_cross_entropy_with_logits(raw[:, 4:], cls_t[idx], reduction="sum")
            return 5.0 * box_loss + cls_loss / max(int(h.sum()), 1)

        class Raw(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, z):
                return self.inner.raw(z)

        _fit(Raw(net), torch.from_numpy(train_img), targets, loss_fn, epochs=epochs, lr=4e-3, one_cycle=True)
        net.eval()
        _export(net, torch.from_numpy(pool_img[:2]), path, "image", "output0")
        _save_pool(name, {"image": pool_img, "gt_boxes": pool_boxes, "gt_classes": pool_cls})
    return path, _load_pool(name)


def build_digit_yolo_wide(rebuild: bool = False):
    """digit_yolo twice as wide (24, 48, 64, 64, 64 channels), trained the same way: a detector with spare
    capacity, as real detectors trained on far more varied data have for a narrow task."""
    return build_digit_yolo(rebuild, width=2, name="digit_yolo_wide")


def build_digit_yolo_wide4(rebuild: bool = False):
    """digit_yolo four times as wide (48, 96, 128, 128, 128 channels), trained the same way: more spare capacity
    than the twice-as-wide one, on which no allocation keeps 99 % of the detections past 9 % fewer MACs
    (benchmarks/detector_allocation.py)."""
    return build_digit_yolo(rebuild, width=4, name="digit_yolo_wide4")


BUILDERS = {"digits_mlp": build_digits_mlp, "digits_cnn": build_digits_cnn,
            "digit_detector": build_digit_detector, "digit_embedder": build_digit_embedder,
            "digit_yolo": build_digit_yolo, "digit_yolo_wide": build_digit_yolo_wide,
            "digit_yolo_wide4": build_digit_yolo_wide4}


def build(name: str, rebuild: bool = False):
    """(onnx path, pool) of one benchmark model, built into benchmarks/.cache/ on first use."""
    warnings.filterwarnings("ignore")
    CACHE.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name](rebuild)


def inputs_of(pool: dict, path) -> dict:
    """The model's inputs (and `labels` when present) from a pool: what onnxprune takes as data."""
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {k: pool[k] for k in [*names, "labels"] if k in pool}


def subset(pool: dict, index: np.ndarray) -> dict:
    return {k: v[index] for k, v in pool.items()}


# --------------------------------------------------------------------------------------------- quality

def quality(name: str, path, pool: dict) -> str:
    """One line saying how good the model is on its pool (data it was not trained on)."""
    feeds = {k: v for k, v in inputs_of(pool, path).items() if k != "labels"}
    out = _run(path, feeds)
    n = len(next(iter(feeds.values())))
    if name in ("digits_mlp", "digits_cnn"):
        return f"accuracy {(out.argmax(1) == pool['labels']).mean():.2%} on {n} pool images"
    if name == "digit_detector":
        y, decision = pool["labels"], out[:, 0] >= 0.5
        tpr, tnr = decision[y == 1].mean(), (~decision[y == 0]).mean()
        return (f"accuracy {(decision == y).mean():.2%}, balanced accuracy {(tpr + tnr) / 2:.2%} "
                f"(recall {tpr:.2%}, specificity {tnr:.2%}) at 0.5; {y.mean():.1%} positives of {n}")
    if name == "digit_embedder":
        classes = np.load(CACHE / "digit_embedder.pool_classes.npy")
        e = out / np.linalg.norm(out, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        nn_acc = (classes[sim.argmax(1)] == classes).mean()
        return f"1-nearest-neighbour (cosine) accuracy {nn_acc:.2%} among {n} pool images, dim {out.shape[1]}"
    if name in ("digit_yolo", "digit_yolo_wide", "digit_yolo_wide4"):
        truth = ground_truth(pool)
        found = detections(out)
        m, f, w = match_counts(found, truth)
        return (f"at score >= {SCORE_THRESHOLD}: recall {m / w:.2%}, precision {m / max(f, 1):.2%} "
                f"({w} digits on {n} canvases, {f} detections, IoU >= {IOU_MATCH}, class match)")
    raise KeyError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="retrain even if the cache has the model")
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} [default: all]")
    args = parser.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name in args.models or MODELS:
        t0 = time.perf_counter()
        path, pool = build(name, rebuild=args.rebuild)
        print(f"{name:<15} {quality(name, path, pool)}  [{time.perf_counter() - t0:.1f} s, {path.name}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
