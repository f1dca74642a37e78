"""One router per resource: `jobs` (/v1/jobs) and `health` (/healthz, /readyz)."""
