"""Our experiments' commands, added to `genir` through the `genir.plugins` entry point:

    genir demo                       both bundled tasks, results table, JSON under runs/demo
    genir build TASK --out DIR       a bundled task (fashion-mnist, openclipart) or universal
    genir eval TASK [--index DIR]    genir, genir+rerank and flat k-NN on a bundled task
    genir eval --task NAME           a universal task (or all): task pool and global pool
    genir ablate [--quick]           the papers' ablation tables

The library's CLI (`genir.cli`) finds `plugin()` by its entry point and hands it the task
names it registers (`registry.TASKS`); it never imports this package by name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from genir.cli_options import (
    CacheOpt,
    ProgressOpt,
    QueriesOpt,
    QuickOpt,
    StepsOpt,
    fail,
)
from genir_experiments.registry import DEMO_TASKS, TASKS

_fail = fail


def _cache(cache_dir: Path | None):
    from genir.encoders.cache import EmbeddingCache

    return EmbeddingCache(cache_dir / "embeddings" if cache_dir else None)


def _write_json(path: Path, obj: Any) -> None:
    from genir.io import atomic_write_json

    atomic_write_json(path, obj)
    typer.echo(f"wrote {path}")


def _prepare(task: str, *, cache_dir: Path | None, num_queries: int, limit: int | None,
             progress: bool, encoder: Any = None, tune_tower: bool | None = None):
    from genir.data.corpus import MissingDataError

    try:
        return TASKS[task].prepare(cache=_cache(cache_dir), num_queries=num_queries,
                             limit=limit, encoder=encoder, tune_tower=tune_tower,
                             progress=progress)
    except (MissingDataError, ValueError) as exc:
        _fail(str(exc))


def _config(task: str, quick: bool, steps: int | None, tokenizer: str = "rq"):
    try:
        from genir.index import tokenizer_class

        cfg = TASKS[task].default_config(quick=quick)
        tokenizer_class(tokenizer)
        cfg.tokenizer = tokenizer
        cfg.check()
    except ValueError as exc:
        _fail(str(exc))
    if steps is not None:
        cfg.train.steps = steps
    return cfg


def demo(out: Annotated[Path, typer.Option(help="results folder")] = Path("runs/demo"),
         quick: QuickOpt = False, num_queries: QueriesOpt = 1000, steps: StepsOpt = None,
         cache_dir: CacheOpt = None, progress: ProgressOpt = True) -> None:
    """Build and evaluate both bundled tasks; print the results tables."""
    start = time.perf_counter()
    results = []
    for task in DEMO_TASKS:
        bundled = TASKS[task]
        typer.secho(f"== {task}", bold=True)
        t0 = time.perf_counter()
        data = _prepare(task, cache_dir=cache_dir, num_queries=num_queries, limit=None,
                        progress=progress)
        index = bundled.build(data, _config(task, quick, steps), progress=progress)
        bundled.save(index, data, out / task / "index")
        result = bundled.evaluate(data, index)
        result.info["task_seconds"] = time.perf_counter() - t0
        results.append(result)
        typer.echo(bundled.format(result))
    total = time.perf_counter() - start
    typer.echo("")
    for result in results:
        typer.echo(TASKS[result.task].format(result) + "\n")
    typer.echo(f"total {total:.0f} s")
    _write_json(out / "results.json", {"seconds": total, "quick": quick,
                                       "results": [TASKS[r.task].to_json(r) for r in results]})


def build_task(task: str, out: Path, *, quick: bool, steps: int | None, limit: int | None,
               tokenizer: str, data_dir: Path, tune_tower: bool | None, cache_dir: Path | None,
               progress: bool) -> None:
    """`genir build TASK`: a bundled task, or "universal" (every universal task's pool)."""
    if task == "universal":
        study = TASKS["universal"]
        data = _prepare_universal(data_dir, cache_dir=cache_dir, progress=progress)
        index = _build_universal(data, quick=quick, steps=steps, progress=progress)
        study.save(index, data, out)
        typer.echo(json.dumps(index.stats(), indent=1))
        typer.echo(f"saved {len(index)} items to {out}")
        return
    config = _config(task, quick, steps, tokenizer)
    data = _prepare(task, cache_dir=cache_dir, num_queries=1, limit=limit, progress=progress,
                    tune_tower=tune_tower)
    index = TASKS[task].build(data, config, progress=progress)
    TASKS[task].save(index, data, out)
    typer.echo(json.dumps(index.stats(), indent=1))
    typer.echo(f"saved {len(index)} items to {out}")


def eval_task(task: str | None, universal_task: str | None, *, index_dir: Path | None,
              json_out: Path | None, quick: bool, num_queries: int | None, steps: int | None,
              limit: int | None, beam_size: int | None, tokenizer: str, data_dir: Path,
              tune_tower: bool | None, cache_dir: Path | None, progress: bool) -> None:
    """`genir eval TASK` (a bundled task) or `genir eval --task NAME` (universal)."""
    if universal_task is not None:
        _eval_universal(universal_task, index_dir=index_dir, json_out=json_out, quick=quick,
                        steps=steps, beam_size=beam_size, data_dir=data_dir,
                        cache_dir=cache_dir, progress=progress)
        return
    num_queries = num_queries or 1000
    assert task is not None
    from genir.index import GenerativeIndex
    from genir.query import QueryEncoder

    index, encoder = None, None
    if index_dir is not None:
        try:
            index = GenerativeIndex.load(index_dir)
            if index.extra.get("task") != task:
                _fail(f"{index_dir} was built for task {index.extra.get('task')!r}, not {task!r}")
            if index.extra.get("encoder", {}).get("path"):
                # reuse what the index trained: projection heads or the tuned tower's top
                encoder = QueryEncoder.for_index(index_dir, index).encoder
                if hasattr(encoder, "cache"):
                    encoder.cache = _cache(cache_dir)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    if index is not None:
        if tune_tower is not None:
            _fail("--tune-tower/--frozen-tower apply to a new build; a saved --index keeps "
                  "the tower it was built with")
        tune_tower = index.extra.get("encoder", {}).get("type") == "efficientnet-lite0-tuned"
    data = _prepare(task, cache_dir=cache_dir, num_queries=num_queries, limit=limit,
                    encoder=encoder, tune_tower=tune_tower, progress=progress)
    if index is None:
        index = TASKS[task].build(data, _config(task, quick, steps, tokenizer), progress=progress)
    elif index.item_ids != data.item_ids:
        _fail(f"{index_dir} was not built on the {task} gallery"
              + (" with this --limit" if limit else ""))
    result = TASKS[task].evaluate(data, index, beam_size=beam_size)
    typer.echo(TASKS[task].format(result))
    if json_out is not None:
        _write_json(json_out, TASKS[task].to_json(result))


def _prepare_universal(data_dir: Path, *, cache_dir: Path | None, progress: bool,
                       encoder: Any = None) -> Any:
    from genir.data.corpus import MissingDataError
    try:
        return TASKS["universal"].prepare(data_dir=data_dir, cache=_cache(cache_dir),
                                          encoder=encoder, progress=progress)
    except (MissingDataError, ValueError) as exc:
        _fail(str(exc))


def _build_universal(data: Any, *, quick: bool, steps: int | None, progress: bool) -> Any:
    study = TASKS["universal"]
    config = study.default_config(quick=quick)
    if steps is not None:
        config.train.steps = steps
    return study.build(data, config, progress=progress)


def _eval_universal(name: str, *, index_dir: Path | None, json_out: Path | None, quick: bool,
                    steps: int | None, beam_size: int | None, data_dir: Path,
                    cache_dir: Path | None, progress: bool) -> None:
    from genir.index import GenerativeIndex
    from genir_experiments.universal import UNIVERSAL
    from genir_experiments.universal_data import TASKS as UNIVERSAL_TASKS

    if name != "all" and name not in UNIVERSAL_TASKS:
        _fail(f"unknown universal task {name!r}; choose one of {', '.join(UNIVERSAL_TASKS)} "
              "or all")
    if index_dir is not None:
        from genir.query import QueryEncoder

        try:
            index = GenerativeIndex.load(index_dir)
            if index.extra.get("task") != UNIVERSAL:
                _fail(f"{index_dir} is not a universal index (task "
                      f"{index.extra.get('task')!r}); build one with genir build universal")
            encoder = QueryEncoder.for_index(index_dir, index).encoder
            encoder.cache = _cache(cache_dir)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        data = _prepare_universal(data_dir, cache_dir=cache_dir, progress=progress,
                                  encoder=encoder)
    else:
        data = _prepare_universal(data_dir, cache_dir=cache_dir, progress=progress)
        index = _build_universal(data, quick=quick, steps=steps, progress=progress)
    try:
        result = TASKS["universal"].evaluate(data, index, beam_size=beam_size,
                                             tasks=None if name == "all" else [name])
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(TASKS["universal"].format(result))
    if json_out is not None:
        _write_json(json_out, result)


def ablate(out: Annotated[Path, typer.Option(help="folder for tables, JSON and plots")]
           = Path("runs/ablations"),
           quick: Annotated[bool, typer.Option("--quick", help="small galleries and few steps "
                                               "(minutes, not hours)")] = False,
           study: Annotated[list[str] | None, typer.Option(
               "--study", help="run only these studies (repeat the option); default: all but "
               "decoder (T5-small-sized decoder vs the default, long on CPU)")] = None,
           cache_dir: CacheOpt = None, progress: ProgressOpt = False) -> None:
    """Re-run the papers' ablation tables on the bundled data (genir ablate --quick)."""
    from genir.data.corpus import MissingDataError
    from genir_experiments import ablate as ablations

    try:
        ablations.run(out, quick=quick, studies=study or ablations.STUDIES,
                      cache=_cache(cache_dir), progress=progress, log=typer.echo)
    except (MissingDataError, ValueError) as exc:
        _fail(str(exc))




def plugin() -> SimpleNamespace:
    """What `genir.cli` adds: the demo and ablate commands, and the task names that
    `genir build` / `genir eval` hand to build_task / eval_task."""
    return SimpleNamespace(commands=[("demo", demo), ("ablate", ablate)], tasks=tuple(TASKS),
                           build=build_task, eval=eval_task)
