"""The README's Python example runs as written (on its own synthetic data)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    assert namespace["rows"].shape == (5, 10)
    assert namespace["precision"] > 0.8


def test_readme_own_data_commands_run(tmp_path, monkeypatch):
    """The three build commands of "Your own data", pasted as written (plus fewer steps), on a
    folder of images, a jsonl of texts and an embeddings file with its ids."""
    import json
    import shlex

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from genir.cli import app

    section = README.read_text().split("## Your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["genir", "build"]] * 3
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        Path("photos", label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                f"photos/{label}/{i}.png")
    Path("docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"note {i}"}) + "\n"
                                          for i in range(10)))
    np.save("emb.npy", rng.normal(size=(30, 8)).astype(np.float32))
    Path("emb.ids.txt").write_text("".join(f"e{i}\n" for i in range(30)))
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, command[1:] + ["--steps", "30", "--no-progress"])
        assert result.exit_code == 0, (command, result.output)
    for query in (["photos.index", "--image", "photos/cats/1.png"],
                  ["docs.index", "--text", "note 3"],
                  ["emb.index", "--vector", json.dumps([0.1] * 8)]):
        result = runner.invoke(app, ["search", *query, "-k", "3", "--json"])
        assert result.exit_code == 0 and len(json.loads(result.stdout)) == 3, result.output
