#!/usr/bin/env bash
# Static security checks of the Bicep templates in infra/ with checkov.
#
# checkov lives in its own virtualenv (.ci/.venv-checkov, git-ignored): it pins an old `packaging` and
# pycep-parser 0.5, which would clash with the project's pycep-parser>=0.7 (tests/infra). The venv is
# created once and reused, so the script is idempotent and fast on a second run.
#
# Fails (exit 1) when a check fails, when a skip has no justification, or when a template other than the
# Microsoft Graph ones cannot be parsed. pycep-parser 0.5 cannot parse `extension microsoftGraphV1`, so
# files declaring it are reported as not scanned by checkov; tests/infra/test_bicep.py parses them with
# pycep-parser>=0.7 instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.ci/.venv-checkov"
CHECKOV_SPEC="checkov==3.3.30"
PYTHON="${PYTHON:-python3}"
started=$(date +%s)

if ! "$VENV/bin/python" -c "import checkov" >/dev/null 2>&1; then
    echo "infra-checks: creating $VENV with $CHECKOV_SPEC"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    log="$(mktemp)"
    if ! "$VENV/bin/pip" install --disable-pip-version-check -q "$CHECKOV_SPEC" >"$log" 2>&1; then
        cat "$log"
        rm -f "$log"
        echo "infra-checks: installing checkov failed" >&2
        exit 1
    fi
    rm -f "$log"
fi

report="$(mktemp)"
trap 'rm -f "$report"' EXIT

# --skip-download and BC_SKIP_MAPPING keep checkov offline (no Prisma Cloud guideline downloads).
# checkov exits non-zero on failed checks; the verdict below is ours, so ignore its status here.
BC_SKIP_MAPPING=TRUE "$VENV/bin/checkov" --framework bicep --directory "$ROOT/infra" \
    --skip-download --output json >"$report" 2>/dev/null || true

set +e
"$VENV/bin/python" - "$report" "$ROOT/infra" <<'PY'
import json
import sys
from pathlib import Path

report_path, infra = sys.argv[1], Path(sys.argv[2])
text = Path(report_path).read_text()
if not text.strip():
    sys.exit("infra-checks: checkov produced no report")
data = json.loads(text)
reports = data if isinstance(data, list) else [data]
results = {"passed_checks": [], "failed_checks": [], "skipped_checks": [], "parsing_errors": []}
for report in reports:
    for key in results:
        results[key].extend(report.get("results", {}).get(key, []))

problems = []
for check in results["failed_checks"]:
    problems.append(f"FAILED {check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
for check in results["skipped_checks"]:
    reason = (check.get("check_result") or {}).get("suppress_comment") or ""
    print(f"skipped {check['check_id']:<14} {check['resource']:<60} {reason.strip()}")
    if not reason.strip() or reason.strip() == "No comment provided":
        problems.append(f"UNJUSTIFIED SKIP {check['check_id']} {check['resource']} ({check['file_path']})")

# Only templates that use the Microsoft Graph extension may fail to parse (pycep-parser 0.5).
for path in results["parsing_errors"]:
    source = Path(path).read_text()
    if "extension microsoftGraphV1" in source:
        print(f"not scanned (Microsoft Graph extension; covered by tests/infra): {Path(path).relative_to(infra)}")
    else:
        problems.append(f"PARSE ERROR {path}")

scanned = {Path(c["file_path"].lstrip("/")).as_posix() for c in results["passed_checks"] + results["failed_checks"] + results["skipped_checks"]}
print(
    f"checkov: {len(results['passed_checks'])} passed, {len(results['failed_checks'])} failed, "
    f"{len(results['skipped_checks'])} skipped (justified beside the resource), "
    f"{len(results['parsing_errors'])} not parsed; files with findings: {', '.join(sorted(scanned))}"
)
for line in problems:
    print(line)
sys.exit(1 if problems else 0)
PY
status=$?
set -e
echo "infra-checks: finished in $(( $(date +%s) - started ))s"
exit $status
