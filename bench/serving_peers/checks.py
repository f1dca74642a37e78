"""One request per front end before it is loaded: it must answer 200, and its top label is
printed (every server serves the same file, so they must agree)."""

from __future__ import annotations

import numpy as np


def top_label(ctx, server, front) -> str:
    """Send one request to `front` of the running `server`; return the predicted label."""
    import httpx

    labels = ctx.card.labels
    paths = ctx.payloads["paths"]
    if front.protocol == "v2-grpc":
        return labels[int(np.argmax(_grpc_probabilities(ctx, server)))]
    if front.protocol == "v2-http":
        url, body = f"{server.http}/v2/models/{ctx.name}/infer", paths["v2-tensor"]
    else:
        url, body = server.http + front.path.format(model=ctx.name), paths[front.body]
    r = httpx.post(url, content=body.read_bytes(), headers={"content-type": "application/json"},
                   timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"{front.title}: HTTP {r.status_code} {r.text[:500]}")
    answer = r.json()
    if front.protocol == "v2-http":
        out = next(o for o in answer["outputs"] if o["name"] == "probabilities")
        return labels[int(np.argmax(out["data"]))]
    if front.answer == "mlflow":
        preds = answer["predictions"]
        row = next(iter(preds.values()))[0] if isinstance(preds, dict) else preds[0]
        row = row["logits"] if isinstance(row, dict) else row
        return labels[int(np.argmax(row))]
    if front.answer == "list":
        return answer[0]["label"]
    return answer["predictions"][0]["label"]


def _grpc_probabilities(ctx, server) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    x = ctx.payloads["tensor"][None].astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(ctx.name, [tensor],
                              outputs=[grpcclient.InferRequestedOutput("probabilities")])
        response = result.get_response()
        if response.raw_output_contents:
            return result.as_numpy("probabilities")[0]
        # KServe answers in typed contents, not raw ones
        (tensor,) = [o for o in response.outputs if o.name == "probabilities"]
        return np.asarray(tensor.contents.fp32_contents, np.float32).reshape(tensor.shape)[0]
    finally:
        client.close()
