"""Keep dvc.yaml deps equal to each stage's import closure (src/ lines sorted): python scripts/sync_dvc_deps.py

Adds missing modules and drops ones a stage no longer imports; tests/test_provenance.py checks the result.
"""
import re, sys
from pathlib import Path
import yaml
REPO = Path('.').resolve()
sys.path.insert(0, str(REPO / 'src'))
from nanoseg import codehash
text = Path('dvc.yaml').read_text()
stages = yaml.safe_load(text)['stages']
for name, st in stages.items():
    module = st["cmd"].split("-m", 1)[1].strip()
    needed = {str(p.relative_to(REPO)) for p in codehash.closure([module])}
    if "src/nanoseg/tracking/__init__.py" in needed:  # logged by path as the served model's code (MLflow models from code)
        needed.add("src/nanoseg/served_model.py")
    deps = [str(d) for d in st['deps']]
    missing = sorted(n for n in needed if n not in deps and not any(n.startswith(d + "/") for d in deps))
    extra = [d for d in deps if d.startswith('src/') and d not in needed]
    if not missing and not extra:
        continue
    start = text.index(f"\n  {name}:\n")
    end = text.find("\n  ", start + len(name) + 5)
    m = re.search(r"\n  [a-z_]+:\n    cmd", text[start + 1:])
    end = start + 1 + m.start() if m else len(text)
    block = text[start:end]
    src = [d for d in deps if d.startswith('src/') and d not in extra] + missing
    others = [d for d in deps if not d.startswith('src/')]
    new_deps = "    deps:\n" + "".join(f"    - {d}\n" for d in others + sorted(src))
    block = re.sub(r"    deps:\n(?:    - .*\n)+", new_deps, block, count=1)
    text = text[:start] + block + text[end:]
    print(name, "added", missing, "removed", extra)
Path('dvc.yaml').write_text(text)
