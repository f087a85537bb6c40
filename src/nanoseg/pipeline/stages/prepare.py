"""Stage ``prepare``: pair images with masks, split 85/15 + 5 folds, write the manifest."""

from nanoseg.config import load_params, resolve
from nanoseg.data.manifest import prepare
from nanoseg.errors import report_errors

OUT = "prepared"


def command(args=None) -> int:
    params = load_params()
    manifest = prepare(params, resolve(params, OUT))
    counts = manifest["split"].value_counts().to_dict()
    print(f"prepared {len(manifest)} images: {counts.get('train', 0)} train "
          f"({params['prepare']['folds']} folds), {counts.get('test', 0)} test -> {OUT}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(command)())
