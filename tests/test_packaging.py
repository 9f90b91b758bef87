"""The wheel installs one import name, ``transplant``, with every subpackage of the repository."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repository_packages() -> set[str]:
    """Dotted names of the packages in the checkout, hypernet/ under its installed name."""
    names = set()
    for init in [*ROOT.glob("transplant/**/__init__.py"), *ROOT.glob("hypernet/**/__init__.py")]:
        parts = init.parent.relative_to(ROOT).parts
        names.add(".".join(("transplant", *parts) if parts[0] == "hypernet" else parts))
    return names


def source_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked but not ignored) without build leftovers:
    an in-tree build/ would hand an old package list to the wheel."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_wheel_has_one_top_level_name_and_every_package(tmp_path):
    source = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("transplant-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["transplant"]
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"transplant"}
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == repository_packages()
    assert "transplant = transplant.cli:app" in entry_points
