"""Offline scoring (`waldo predict --model MODEL --output DEST SOURCE...`): an exported model over
folders, buckets, packs and lists of images, in-process on ONNX Runtime or on Ray Data, into
Parquet, with the service's own pre- and post-processing.

- `sources`: the SOURCE arguments as images (names only) and how their bytes are read;
- `model`: the model from the registry or a version folder, and its ONNX Runtime session;
- `decode`: the service's decoding, preprocessing and answers, for one batch;
- `writer`: the output's committed parts, what they cover (resume), `_errors.csv`, `_manifest.json`;
- `local`: in-process scoring on threads; `raydata`: Ray Data with an actor pool;
- `pipeline`: `predict(spec)`, the run as a whole, tracked in MLflow.
"""


def predict(spec, **kwargs):
    """`training.scoring.pipeline.predict` (imported when first called)."""
    from training.scoring.pipeline import predict as run

    return run(spec, **kwargs)


__all__ = ["predict"]
