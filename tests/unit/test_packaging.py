"""Every package in the source tree is in the distribution (a normal install, not only -e)."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for name, folder in cfg["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    # a package nested in another mapped folder belongs to its own mapping
    mapped = {name for name in cfg["package-dir"]}
    found = {
        p
        for p in found
        if not any(p != m and p.startswith(m + ".") and p in mapped for m in mapped)
    }
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
