#!/usr/bin/env bash
# Create the secret files that cluster/mlflow/docker-compose.yaml reads, with random values, in DIR (mode 700,
# files mode 600). Existing files are kept, so running it again changes nothing. Keep DIR outside the repository.
set -euo pipefail
dir="${1:?usage: cluster/mlflow/make-secrets.sh DIR   (e.g. ~/.binsweep/mlflow-secrets)}"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
[ -s "$dir/pg_password" ] || rand >"$dir/pg_password"
[ -s "$dir/minio_user" ] || echo mlflow >"$dir/minio_user"
[ -s "$dir/minio_password" ] || rand >"$dir/minio_password"
[ -s "$dir/mlflow_admin_password" ] || rand >"$dir/mlflow_admin_password"
[ -s "$dir/mlflow_flask_secret" ] || rand >"$dir/mlflow_flask_secret"
echo "secrets in $dir; the MLflow admin is 'admin' with the password in $dir/mlflow_admin_password" >&2
