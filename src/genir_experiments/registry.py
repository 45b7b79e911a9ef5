"""One `Task` protocol for our experiments, registered by name: what `genir demo`, `genir build
TASK`, `genir eval TASK` and `genir ablate` run on the bundled data.

    task = TASKS["fashion-mnist"]
    data = task.prepare(cache=cache, num_queries=1000)
    index = task.build(data, task.default_config(quick=False))
    print(task.format(task.evaluate(data, index)))

The bundled tasks (`tasks.py`: Fashion-MNIST image->image, Openclipart caption->image) and the
universal study (`universal.py`: one GENIUS index over every universal task's pool) keep it
alike. This package uses the library (`genir`); the library never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from genir.encoders.cache import EmbeddingCache
from genir.index import GenerativeIndex, IndexConfig


class Task(Protocol):
    name: str

    def default_config(self, *, quick: bool = False) -> IndexConfig:
        """The tuned defaults (quick: fewer steps, for tests and smoke runs)."""
        ...

    def prepare(self, *, cache: EmbeddingCache | None = None, progress: bool = False,
                encoder: Any = None, **options: Any) -> Any:
        """Load and embed the task's data (cached); `encoder`: a saved index's, to reuse."""
        ...

    def build(self, data: Any, config: IndexConfig, *, progress: bool = False) -> GenerativeIndex:
        ...

    def evaluate(self, data: Any, index: GenerativeIndex, *, beam_size: int | None = None,
                 **options: Any) -> Any:
        """genir, genir + rerank and flat k-NN on the same embeddings in one run."""
        ...

    def format(self, result: Any) -> str:
        ...

    def to_json(self, result: Any) -> Any:
        ...

    def save(self, index: GenerativeIndex, data: Any, out: Path) -> None:
        """Write the index and what its queries need (a trained encoder, thumbnails)."""
        ...


class BundledTask:
    """Fashion-MNIST or Openclipart (`tasks.py`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def default_config(self, *, quick: bool = False) -> IndexConfig:
        from genir_experiments import tasks

        return tasks.default_config(self.name, quick=quick)

    def prepare(self, *, cache: EmbeddingCache | None = None, progress: bool = False,
                encoder: Any = None, **options: Any) -> Any:
        from genir_experiments import tasks

        return tasks.prepare(self.name, cache=cache, encoder=encoder, progress=progress,
                             **options)

    def build(self, data: Any, config: IndexConfig, *, progress: bool = False) -> GenerativeIndex:
        from genir_experiments import tasks

        return tasks.build(data, config, progress=progress)

    def evaluate(self, data: Any, index: GenerativeIndex, *, beam_size: int | None = None,
                 **options: Any) -> Any:
        from genir_experiments import tasks

        return tasks.evaluate(data, index, beam_size=beam_size)

    def format(self, result: Any) -> str:
        from genir_experiments import tasks

        return tasks.format_table(result)

    def to_json(self, result: Any) -> Any:
        return result.to_dict()

    def save(self, index: GenerativeIndex, data: Any, out: Path) -> None:
        index.save(out, thumbnails=data.thumbnails())
        if data.encoder is not None:
            data.encoder.save(out / data.encoder_spec["path"])


class UniversalStudy:
    """Every universal task's candidates in one GENIUS index (`universal.py`); prepare reads
    (or first writes) the tasks under `data_dir`; evaluate takes `tasks` (names or None)."""

    name = "universal"

    def default_config(self, *, quick: bool = False) -> IndexConfig:
        from genir_experiments.universal import default_config

        return default_config(quick=quick)

    def prepare(self, *, cache: EmbeddingCache | None = None, progress: bool = False,
                encoder: Any = None, data_dir: str | Path = "runs/universal/tasks",
                **options: Any) -> Any:
        from genir_experiments.universal import prepare_universal

        return prepare_universal(data_dir, cache=cache, encoder=encoder, progress=progress)

    def build(self, data: Any, config: IndexConfig, *, progress: bool = False) -> GenerativeIndex:
        from genir_experiments.universal import build_universal

        return build_universal(data, config, progress=progress)

    def evaluate(self, data: Any, index: GenerativeIndex, *, beam_size: int | None = None,
                 tasks: list[str] | None = None, **options: Any) -> Any:
        from genir_experiments.universal import evaluate_universal

        return evaluate_universal(data, index, tasks=tasks, beam_size=beam_size)

    def format(self, result: Any) -> str:
        from genir_experiments.universal import format_universal

        return format_universal(result)

    def to_json(self, result: Any) -> Any:
        return result

    def save(self, index: GenerativeIndex, data: Any, out: Path) -> None:
        index.save(out)
        data.encoder.save(out / data.encoder_spec["path"])


TASKS: dict[str, Task] = {"fashion-mnist": BundledTask("fashion-mnist"),
                          "openclipart": BundledTask("openclipart"),
                          "universal": UniversalStudy()}
DEMO_TASKS = ("fashion-mnist", "openclipart")


def task(name: str) -> Task:
    """The task called `name`; ValueError lists them."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
