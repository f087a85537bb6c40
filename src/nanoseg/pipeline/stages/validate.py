"""Stage ``validate``: the Great Expectations gate over the manifest."""

from nanoseg.config import load_params, resolve
from nanoseg.data.manifest import read_prepared
from nanoseg.errors import report_errors
from nanoseg.data.validation import run_gate

OUT = "reports/validation"


def command(args=None) -> int:
    params = load_params()
    manifest, split = read_prepared(resolve(params, "prepared"))
    summary = run_gate(manifest, split, params, resolve(params, OUT))
    print(f"data validation passed: {summary['met']}/{summary['expectations']} expectations -> {OUT}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
