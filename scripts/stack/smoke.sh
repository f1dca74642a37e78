# scripts/stack.sh `smoke`: the stack as a user meets it. Sourced by scripts/stack.sh (its variables and helpers); not run on its own.
# shellcheck shell=bash

# --- smoke -------------------------------------------------------------------------------------

env_value() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; }

http_ok() {  # http_ok URL [curl args...]: 2xx within 10 s
    local url=$1; shift
    curl -fsS --max-time 10 -o /dev/null -w '%{http_code}' "$@" "$url" >/dev/null
}

smoke_endpoints() {
    local url
    project_containers | grep -v -E '\(healthy\)|Exited \(0\)' && die "not every service is healthy"
    for url in http://127.0.0.1:5000/health http://127.0.0.1:8265/api/gcs_healthz \
               http://127.0.0.1:8000/healthz http://127.0.0.1:8000/metrics http://127.0.0.1:8001/healthz; do
        http_ok "$url" || die "$url does not answer"
        say "200 $url"
    done
    # the dashboard behind Ray's token auth: the token opens it
    http_ok http://127.0.0.1:8265/api/version -H "Authorization: Bearer $(env_value RAY_AUTH_TOKEN)" \
        || die "Ray dashboard API refuses the token"
    say "200 http://127.0.0.1:8265/api/version (with RAY_AUTH_TOKEN)"
}

JOB="" RUN_ID="" MODEL_VERSION=""
run_job() {  # run_job KIND SPEC_JSON: submit it to the jobs API with its token, wait; JSON in $JOB
    local kind=$1 token id status start=$SECONDS
    token=$(env_value WALDO_JOBS_TOKEN)
    JOB=$(curl -fsS --max-time 60 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
          -d "{\"kind\": \"$kind\", \"spec\": $2}" http://127.0.0.1:8001/v1/jobs) || die "POST /v1/jobs ($kind) failed"
    id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <<< "$JOB")
    say "submitted $kind job $id"
    while true; do
        JOB=$(curl -fsS --max-time 30 -H "Authorization: Bearer $token" "http://127.0.0.1:8001/v1/jobs/$id") || JOB='{}'
        status=$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("status", "?"))' <<< "$JOB")
        case $status in
            SUCCEEDED) break ;;
            FAILED|STOPPED)
                curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:8001/v1/jobs/$id/logs?tail=40" >&2 || true
                die "$kind job $id: $status" ;;
        esac
        (( SECONDS - start < ${WALDO_STACK_TRAIN_TIMEOUT:-1200} )) || die "$kind job $id still $status"
        sleep 5
    done
    say "$kind job $id SUCCEEDED after $((SECONDS - start)) s: $(python3 -c 'import json, sys
j = json.load(sys.stdin); r = j.get("result") or {}
print("duration", j.get("duration_s"), "s, test_acc", (r.get("metrics") or {}).get("test_acc"),
      "run", j.get("mlflow_run_id"), "model", (j.get("model") or {}).get("model_uri"),
      "@", (j.get("model") or {}).get("alias"))' <<< "$JOB")"
}

smoke_train() {
    run_job train '{"model": "cnn", "epochs": 1, "workers": 1, "gpus_per_worker": 0}'
    local run_id
    run_id=$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("mlflow_run_id") or "")' <<< "$JOB")
    [[ -n $run_id ]] || die "the train job names no MLflow run"
    RUN_ID=$run_id
    http_ok "http://127.0.0.1:5000/api/2.0/mlflow/runs/get?run_id=$run_id" || die "MLflow has no run $run_id"
    say "MLflow run $run_id exists"
    # checkpoints under s3://waldo/ray, read with the S3 user the Ray nodes use
    podman exec "${PROJECT}_minio_1" python -c '
import boto3, sys
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                  aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="waldo", Prefix="ray/")
        for o in page.get("Contents", [])]
ckpt = [k for k in keys if "checkpoint" in k]
print(len(keys), "objects under s3://waldo/ray/,", len(ckpt), "in checkpoints, e.g.", ckpt[:2])
sys.exit(0 if ckpt else 1)' "$(env_value WALDO_S3_ACCESS_KEY)" "$(env_value WALDO_S3_SECRET_KEY)" >&2 \
        || die "no checkpoint under s3://waldo/ray"
}

smoke_export() {  # the run's best checkpoint to ONNX, registered as cnn, @production moved to it
    run_job export "{\"run\": \"$RUN_ID\", \"name\": \"cnn\", \"alias\": \"production\"}"
    MODEL_VERSION=$(python3 -c 'import json, sys; print((json.load(sys.stdin).get("model") or {}).get("model_version") or "")' <<< "$JOB")
    [[ -n $MODEL_VERSION ]] || die "the export job registered no model version"
}

smoke_serving() {
    # a test digit from mnist-5k (in the training image), as a PNG
    local png="$STATE/digit.png" label answer version start=$SECONDS
    label=$(podman exec "${PROJECT}_ray-head_1" python -c '
import io, sys
from training.data.mnist5k import mnist5k
from PIL import Image
images, labels = mnist5k()
i = 4999
buf = io.BytesIO(); Image.fromarray(images[i, 0].numpy()).save(buf, format="PNG")
sys.stdout.buffer.write(buf.getvalue()); sys.stderr.write(str(int(labels[i])))' 2>&1 >"$png") \
        || die "could not make a test digit: $label"
    label=${label##*$'\n'}
    # serving polls the registry every WALDO_POLL_INTERVAL_S: wait for the version the job made
    while true; do
        answer=$(curl -fsS --max-time 30 -F "file=@$png" 'http://127.0.0.1:8000/v1/models/cnn/predict?top_k=1' 2>/dev/null) || answer='{}'
        version=$(python3 -c 'import json, sys; print(json.load(sys.stdin).get("version", ""))' <<< "$answer")
        [[ $version == "$MODEL_VERSION" ]] && break
        (( SECONDS - start < ${WALDO_STACK_READY_TIMEOUT:-300} )) \
            || die "serving still has version '$version' of cnn, not $MODEL_VERSION, after $((SECONDS - start)) s"
        sleep 1
    done
    say "serving has cnn v$MODEL_VERSION (@production) $((SECONDS - start)) s after the job; digit $label -> $answer"
    python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["predictions"][0]["label"] != sys.argv[1])' \
        "$label" <<< "$answer" || say "warning: digit $label misclassified (1 epoch on CPU)"
}

smoke_scale() {
    local start=$SECONDS nodes
    compose up -d --no-recreate --scale ray-worker=2 > "$STATE/scale.log" 2>&1 &
    wait_healthy $!
    nodes=$(podman exec "${PROJECT}_ray-head_1" python -c '
import ray
ray.init(address="auto", logging_level="ERROR")
print(sum(1 for n in ray.nodes() if n["Alive"]))')
    [[ $nodes == 3 ]] || die "Ray sees $nodes live nodes, not 3 (head + 2 workers)"
    say "scale ray-worker=2: Ray sees $nodes live nodes, $((SECONDS - start)) s"
}

cmd_smoke() {
    [[ -f $ENV_FILE ]] || die "no stack: run scripts/stack.sh up first"
    timed "smoke (a) health + endpoints" smoke_endpoints
    timed "smoke (b) train job on Ray" smoke_train
    timed "smoke (b) export job, @production" smoke_export
    timed "smoke (c) serving picks it up" smoke_serving
    timed "smoke (d) scale ray-worker=2" smoke_scale
    say "smoke passed; scripts/stack.sh down takes it down (smoke (e))"
}
