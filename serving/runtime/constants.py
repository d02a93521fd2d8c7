"""Service-wide constants, in one place. Model scaling constants: ``model_spec.ModelSpec``."""

MODEL_NAME = "colorizer"

# Stages of a request, in order, as the handler's metrics (colorizer_stage_seconds) and
# serving.runtime.service name them.
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")

# Precisions a network can run in ("auto": measured at load, serving.runtime.precision).
PRECISIONS = ("auto", "fp32", "bf16")

# A worker that cannot start (e.g. a precision the model cannot run) logs one line with this
# prefix; `colorizer serve` stops waiting when it sees it and shows the line.
CANNOT_START = "colorizer cannot start:"

# Ports. Callers reach the front (serving/front/: nginx for REST and metrics, the gRPC
# front for gRPC) on TorchServe's default ports; TorchServe itself listens behind it on
# loopback only, on the BACKEND_* ports, and its management API on loopback as before.
HTTP_PORT = 8080
METRICS_PORT = 8082
GRPC_PORT = 7070
FRONT_STATUS_PORT = 8083  # nginx's requests in flight, loopback only (k8s/drain.py)
BACKEND_HTTP_PORT = 9080
BACKEND_METRICS_PORT = 9082
BACKEND_GRPC_PORT = 9070
MANAGEMENT_PORT = 8081
GRPC_MANAGEMENT_PORT = 7071

# Input acceptance.
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP; above -> 413
# Pillow format names; Pillow opens MPO (multi-picture JPEG) through JPEG.
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
INPUT_FORMATS_HUMAN = "JPEG, PNG, WebP, BMP, TIFF, GIF (first frame)"
# File suffixes of those formats: what `colorizer colorize` and training pick from a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# Request metadata: REST headers, or gRPC input keys of the same names in lower case
# (TorchServe 0.12 hands a gRPC handler its input map, never the call's metadata or deadline).
REQUEST_ID_HEADER = "X-Request-Id"  # the caller's id; TorchServe's own id when none is sent
# TorchServe 0.12's REST frontend sets X-Request-Id on every response to its own id (the
# handler's headers are overwritten), so the handler echoes a caller's id under this name;
# the front (serving/front/nginx.conf) then sets X-Request-Id back to the caller's id (or
# TorchServe's, when the caller sent none) and passes TorchServe's id on under
# SERVER_REQUEST_ID_HEADER.
ECHOED_REQUEST_ID_HEADER = "X-Client-Request-Id"
SERVER_REQUEST_ID_HEADER = "X-Server-Request-Id"
TRACEPARENT_HEADER = "traceparent"  # W3C Trace Context; logged and echoed, never required
DEADLINE_HEADER = "X-Request-Deadline"  # when the caller gives up: Unix time in milliseconds
MAX_REQUEST_ID_CHARS = 128  # printable ASCII, no spaces
# A request whose deadline passes before its turn gets 504 with this Retry-After (seconds).
EXPIRED_RETRY_AFTER_S = 1

# multipart/form-data as the front passes it to TorchServe: renamed, so that TorchServe's
# frontend hands the body on unread and the handler parses it (serving/runtime/forms.py).
FORM_CONTENT_TYPE = "application/vnd.colorizer.form-data"
# Fields of a form (data, format, quality, x-request-id, traceparent, x-request-deadline),
# with room for a few more; gRPC input maps get the same cap (serving/front/grpc_front.py).
MAX_FORM_PARTS = 16

# Output encoding.
OUTPUT_FORMATS = ("jpeg", "png", "webp")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
FALLBACK_OUTPUT_FORMAT = "png"
DEFAULT_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # level 6 (Pillow's default) costs ~40x more time for ~10% smaller files

# Autoscaling signal: inference requests per second, from TorchServe's own counter in
# Prometheus mode. The serving tests prove this query on a real Prometheus; the k8s
# prometheus-adapter rule and HPA use the same one.
REQUEST_COUNTER = "ts_inference_requests_total"
RATE_WINDOW = "1m"
REQUEST_RATE_PROMQL = f'sum(rate({REQUEST_COUNTER}{{model_name="{MODEL_NAME}"}}[{RATE_WINDOW}]))'
