"""Import floors: every module of byola/ and evaluation/ imports only modules on lower floors of docs/DESIGN.md's
map (or of its own package). The map is the source: this test reads it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lazy re-exports (docs/DESIGN.md): byola/__init__.py's `byola.load` (byola.embed), and byola.embed's names of the
# files job (byola.embed_job, which builds on byola.embed), imported on first use.
EXEMPT = {("byola", "byola.embed"), ("byola.embed", "byola.embed_job")}


def design_floors() -> dict[str, int]:
    """``{module or package prefix: floor}`` from the map in docs/DESIGN.md."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    block = text.split("```", 2)[1]
    floors, floor = {}, None
    for line in block.splitlines():
        m = re.match(r"^floor (\d+)\s+(\S+)", line) or re.match(r"^\s{10}((?:byola|evaluation)/\S*)", line)
        if m is None:
            continue
        if line.startswith("floor"):
            floor, path = int(m.group(1)), m.group(2)
        else:
            path = m.group(1)
        name = path.removesuffix(".py").removesuffix("/").replace("/", ".").removesuffix(".__init__")
        assert name not in floors, f"{path} is on two floors of docs/DESIGN.md"
        floors[name] = floor
    return floors


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def project_imports(path: Path, name: str | None = None) -> set[str]:
    """The byola/evaluation modules ``path`` (module ``name``) imports, anywhere in the file, relative imports
    resolved (``byola.evaluation`` is the installed name of evaluation/)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        for imported in names:
            imported = imported.replace("byola.evaluation", "evaluation", 1)
            if imported.split(".")[0] in ("byola", "evaluation"):
                found.add(imported)
    return found


def floor_of(name: str, floors: dict[str, int]) -> tuple[str, int] | None:
    """The map entry covering module ``name``: itself or its nearest listed package."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in floors:
            return key, floors[key]
    return None


def violations(name: str, imports: set[str], floors: dict[str, int]) -> list[str]:
    """Imports of module ``name`` that are not on a lower floor nor in its own package."""
    owner, floor = floor_of(name, floors)
    problems = []
    for imported in sorted(imports):
        target = floor_of(imported, floors)
        if target is None:
            problems.append(f"{name} imports {imported}, which is not on the map")
        elif target[0] != owner and target[1] >= floor and (name, imported) not in EXEMPT:
            problems.append(f"{name} (floor {floor}) imports {imported} (floor {target[1]})")
    return problems


def test_every_module_imports_only_lower_floors() -> None:
    floors = design_floors()
    modules = sorted(p for folder in ("byola", "evaluation") for p in (ROOT / folder).rglob("*.py"))
    assert len(modules) > 30
    table, problems = [], []
    for path in modules:
        name = module_name(path)
        assert floor_of(name, floors) is not None, f"{path.relative_to(ROOT)} is not on docs/DESIGN.md's map"
        table.append(f"{floor_of(name, floors)[1]}  {name}")
        problems += violations(name, project_imports(path), floors)
    print("\n".join(sorted(table, key=lambda row: (-int(row.split()[0]), row))))
    assert not problems, "\n".join(problems)


def test_the_check_catches_upward_and_sideways_imports(tmp_path: Path) -> None:
    floors = design_floors()
    assert floors["byola.cli"] > floors["byola.pretrain"] > floors["byola.recipe"] > floors["byola.modalities"]
    probe = tmp_path / "probe.py"
    probe.write_text("from byola.pretrain import pretrain\nimport byola.evaluation.run\nfrom byola import norm\n")
    found = project_imports(probe, "byola.data")
    assert {"byola.pretrain", "evaluation.run"} <= found
    assert violations("byola.data", found, floors) == [
        "byola.data (floor 3) imports byola.pretrain (floor 7)",
        "byola.data (floor 3) imports evaluation.run (floor 6)"]
    assert violations("byola.engine.byol", {"byola.engine.heads", "byola.layers"}, floors) == []
