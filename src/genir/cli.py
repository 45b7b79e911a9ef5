"""`genir` command line: a thin adapter over `genir.pipeline`, `genir.query` and
`GenerativeIndex`; commands and tasks of plugins (entry point `genir.plugins`; our
experiments add demo, ablate and the bundled tasks) join it at import.

    genir demo                     both bundled tasks, results table, JSON under runs/demo
    genir build SOURCE --out DIR   build and save an index on your data (a folder of images,
                                   a table, an embeddings file), a paper's benchmark
                                   (inshop:ROOT, coco:JSON, mbeir:QUERIES, ...) or a
                                   bundled task (fashion-mnist, openclipart)
    genir search DIR --text "..."  query a saved index (or --image PATH, --vector JSON)
    genir add DIR --id ID --image PATH   add an item (or --caption, --vector), no retraining
    genir eval SOURCE [--index DIR]  score genir, genir+rerank and flat k-NN; table + JSON
    genir build universal --out DIR    one GENIUS-style index over every universal task's pool
    genir eval --task NAME [--index DIR]  a universal task (or "all"): task pool and global pool
    genir compile                  compile the search kernels into numba's cache (once)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from genir.cli_options import (
    DEFAULT_UNIVERSAL_DATA,
    CacheOpt,
    LimitOpt,
    ProgressOpt,
    QuickOpt,
    StepsOpt,
    TokenizerOpt,
    TowerOpt,
    UniversalDirOpt,
    fail,
)
from genir.index import MAX_K

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Generative retrieval over images and text.")

TaskArg = Annotated[str, typer.Argument(
    help="what to index: a folder of images, a table (.jsonl/.csv/.parquet), embeddings (.npy, "
         "or .parquet with a vector column), NAME:PATH (folder, table, vectors, inshop, cub200, "
         "cars196, flickr30k, coco, mbeir) or a bundled task (fashion-mnist, openclipart; "
         "build: or universal)")]
EncoderOpt = Annotated[str, typer.Option(
    "--encoder", help="default (bundled towers, chosen by what the items are), "
    "efficientnet-lite0, sentence-transformers[:PATH_OR_NAME], clip:PATH_OR_NAME (Hugging "
    "Face CLIPModel folder), none (your own embeddings)")]
IdColOpt = Annotated[str, typer.Option("--id-column", help="table/parquet: the id column")]
TextColOpt = Annotated[str, typer.Option("--text-column", help="table: the text column")]
ImageColOpt = Annotated[str, typer.Option("--image-column", help="table: the image path column "
                                          "(relative to the table)")]
LabelColOpt = Annotated[str, typer.Option("--label-column", help="table/parquet: the label "
                                          "column (optional)")]
VectorColOpt = Annotated[str, typer.Option("--vector-column", help="parquet: the vector column")]
IdsOpt = Annotated[str | None, typer.Option("--ids", help=".npy embeddings: a file with one id "
                                            "per line (default: <stem>.ids.txt, else row numbers)")]
ImageRootOpt = Annotated[str | None, typer.Option(
    "--image-root", help="inshop, flickr30k, coco, mbeir: the folder the image paths are under")]
SplitOpt = Annotated[str | None, typer.Option(
    "--split", help="cub200/cars196: classes (default) or official; flickr30k/coco: test "
    "(default), val, train, restval")]
AllCaptionsOpt = Annotated[bool, typer.Option("--all-captions", help="coco: keep every caption "
                                              "(default: the first 5 per image, as UniIR)")]
PoolOpt = Annotated[str, typer.Option("--pool", help="mbeir: local (the task's pool) or union")]
WorkOpt = Annotated[Path | None, typer.Option(
    "--work-dir", help="where embeddings stream to while building (default: .OUT.work beside "
    "--out); a build killed half way resumes from it")]


_fail = fail


def _write_json(path: Path, obj: Any) -> None:
    from genir.io import atomic_write_json

    atomic_write_json(path, obj)
    typer.echo(f"wrote {path}")


@app.command()
def build(task: TaskArg, out: Annotated[Path, typer.Option("--out", help="index folder")],
          quick: QuickOpt = False, steps: StepsOpt = None, limit: LimitOpt = None,
          tokenizer: TokenizerOpt = "rq", data_dir: UniversalDirOpt = DEFAULT_UNIVERSAL_DATA,
          tune_tower: TowerOpt = None, cache_dir: CacheOpt = None,
          progress: ProgressOpt = True, encoder: EncoderOpt = "default",
          id_column: IdColOpt = "id", text_column: TextColOpt = "text",
          image_column: ImageColOpt = "image", label_column: LabelColOpt = "label",
          vector_column: VectorColOpt = "vector", ids: IdsOpt = None,
          image_root: ImageRootOpt = None, split: SplitOpt = None,
          all_captions: AllCaptionsOpt = False, pool: PoolOpt = "local",
          work_dir: WorkOpt = None) -> None:
    """Build a generative index and save it to --out: on your data or a paper's benchmark
    (SOURCE), or on a task a plugin registers (the bundled fashion-mnist, openclipart and
    universal)."""
    plugin = _plugin_for(task)
    if plugin is not None:
        plugin.build(task, out, quick=quick, steps=steps, limit=limit, tokenizer=tokenizer,
                     data_dir=data_dir, tune_tower=tune_tower, cache_dir=cache_dir,
                     progress=progress)
        return
    from genir.data.corpus import MissingDataError
    from genir.encoders.registry import parse_encoder
    from genir.pipeline import build_source, default_config

    if limit is not None or tune_tower is not None:
        _fail("--limit and --tune-tower/--frozen-tower apply to the bundled tasks, not to "
              f"{task}")
    source = _open_source(task, id_column, text_column, image_column, label_column,
                          vector_column, ids, image_root, split, all_captions, pool)
    try:
        spec = parse_encoder(encoder)
        config = None
        if tokenizer != "rq" or quick:
            config = default_config(len(source.items))
            config.tokenizer = tokenizer
            config.check()
            if quick:
                config.train.steps = 300
        build_source(source, out, encoder=spec, config=config, steps=steps,
                     work_dir=work_dir, progress=progress, log=typer.echo)
    except (MissingDataError, ValueError, OSError, ImportError) as exc:
        _fail(str(exc))


def _open_source(spec: str, id_column: str, text_column: str, image_column: str,
                 label_column: str, vector_column: str, ids: str | None,
                 image_root: str | None, split: str | None, all_captions: bool,
                 pool: str) -> Any:
    from genir.data.corpus import MissingDataError
    from genir.data.sources import Columns, SourceOptions, open_source

    options = SourceOptions(columns=Columns(id=id_column, text=text_column, image=image_column,
                                            label=label_column, vector=vector_column),
                            ids=ids, image_root=image_root, split=split,
                            all_captions=all_captions, pool=pool)
    try:
        return open_source(spec, options)
    except (MissingDataError, ValueError, ImportError) as exc:
        names = [name for plugin in PLUGINS for name in plugin.tasks]
        bundled = f"; bundled tasks: {', '.join(names)}" if "no such file" in str(exc) and \
            names else ""
        _fail(f"{exc}{bundled}")


@app.command()
def search(index_dir: Annotated[Path, typer.Argument(help="a folder written by genir build")],
           text: Annotated[str | None, typer.Option(help="a text query")] = None,
           image: Annotated[Path | None, typer.Option(help="an image file as the query")] = None,
           vector: Annotated[str | None, typer.Option(
               help="a query vector: a JSON array of numbers, or a .npy file (an index of "
                    "your own embeddings)")] = None,
           k: Annotated[int, typer.Option("-k", min=1, max=MAX_K, help="results")] = 10,
           rerank: Annotated[bool, typer.Option(help="rerank by embedding similarity")] = False,
           beam_size: Annotated[int | None, typer.Option(min=1, help="beam width")] = None,
           instruction: Annotated[str | None, typer.Option(
               help="what to retrieve, e.g. 'retrieve the caption of this image' (needed by a "
                    "universal index)")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Search a saved index with a text, an image, both, or a vector (and, for a universal
    index, an instruction)."""
    from genir.encoders.base import ImageLoadError
    from genir.index import GenerativeIndex
    from genir.query import QueryEncoder, assemble_query

    if image is not None and not image.is_file():
        _fail(f"--image {image} is not a file")
    try:
        numbers = _read_vector(vector) if vector is not None else None
        index = GenerativeIndex.load(index_dir)
        encoder = QueryEncoder.for_index(index_dir, index)
        query = assemble_query(encoder, text=text, image=image, vector=numbers,
                               instruction=instruction,
                               item_modality=index.extra.get("item_modality", "image"),
                               dim=index.item_emb.shape[1])
    except (FileNotFoundError, ValueError, ImageLoadError, TypeError) as exc:
        _fail(str(exc))
    scores, rows = index.search(query.decoder_input, k, rerank=rerank, beam_size=beam_size,
                                query_emb=query.emb)
    hits = [{"rank": r + 1, "item_id": index.item_ids[i], "row": int(i), "score": float(s)}
            for r, (s, i) in enumerate(zip(scores[0], rows[0], strict=True)) if i >= 0]
    if as_json:
        typer.echo(json.dumps(hits, indent=1))
        return
    for h in hits:
        typer.echo(f"{h['rank']:>4}  {h['score']:>9.4f}  {h['item_id']}")


@app.command()
def add(index_dir: Annotated[Path, typer.Argument(help="a folder written by genir build")],
        item_id: Annotated[str, typer.Option("--id", help="the new item's unique id")],
        image: Annotated[Path | None, typer.Option(help="the item's image file")] = None,
        caption: Annotated[str | None, typer.Option(help="the item's caption (or text)")] = None,
        vector: Annotated[str | None, typer.Option(
            help="the item's embedding: a JSON array or a .npy file (an index of your own "
                 "embeddings)")] = None) -> None:
    """Add an item to a saved index without retraining: tokenized with the fitted tokenizer,
    on disk when the command returns (the same rules as the service's POST /items)."""
    from genir.encoders.base import ImageLoadError
    from genir.index import GenerativeIndex
    from genir.query import QueryEncoder, assemble_item
    from genir.store import IndexLockedError, StoreCorruptError

    if not item_id.strip():
        _fail("--id is empty")
    if image is not None and not image.is_file():
        _fail(f"--image {image} is not a file")
    try:
        index = GenerativeIndex.open(index_dir, writable=True)
    except (FileNotFoundError, ValueError, IndexLockedError, StoreCorruptError) as exc:
        _fail(str(exc))
    try:
        encoder = QueryEncoder.for_index(index_dir, index)
        item = assemble_item(encoder, image=image, caption=caption,
                             vector=_read_vector(vector) if vector is not None else None,
                             item_modality="mixed" if encoder.needs_instruction else
                             index.extra.get("item_modality", "image"),
                             dim=index.item_emb.shape[1])
        if image is not None:
            item.meta["image_path"] = str(image.resolve())   # its thumbnail, made on request
        row = int(index.add(item.emb, [item_id], item_meta=[item.meta])[0])
    except (ValueError, ImageLoadError, TypeError) as exc:
        _fail(str(exc))
    finally:
        index.close()
    typer.echo(f"added {item_id} (codes {index.codes[row].tolist()}); {len(index)} items")


def _read_vector(value: str) -> list[float]:
    """--vector: a JSON array, or a .npy file holding one vector."""
    import numpy as np

    if value.endswith(".npy"):
        try:
            array = np.load(value)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--vector {value}: not a readable .npy file ({exc})") from exc
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1 or array.dtype.kind not in "fiu":
            raise ValueError(f"--vector {value}: expected one vector, got shape {array.shape}")
        return [float(x) for x in array]
    try:
        numbers = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--vector is not a JSON array of numbers: {exc.msg}") from exc
    if not isinstance(numbers, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        raise ValueError("--vector must be a JSON array of numbers")
    return [float(x) for x in numbers]


@app.command("eval")
def eval_(task: Annotated[str | None, typer.Argument(
              help="bundled task: fashion-mnist or openclipart")] = None,
          universal_task: Annotated[str | None, typer.Option(
              "--task", help="a universal task (text_to_image, image_to_text, image_to_image, "
              "text_to_text, text_to_image_text, image_text_to_image) or all")] = None,
          index_dir: Annotated[Path | None, typer.Option("--index", help="a saved index; "
                                                         "built from scratch if omitted")] = None,
          json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
          quick: QuickOpt = False,
          num_queries_set: Annotated[int | None, typer.Option(
              "--num-queries", min=1, help="evaluation queries (bundled tasks: 1000; sources: "
              "all, or a seeded sample of this many)")] = None,
          steps: StepsOpt = None,
          limit: LimitOpt = None, beam_size: Annotated[int | None, typer.Option(min=1)] = None,
          tokenizer: TokenizerOpt = "rq", data_dir: UniversalDirOpt = DEFAULT_UNIVERSAL_DATA,
          tune_tower: TowerOpt = None, cache_dir: CacheOpt = None,
          progress: ProgressOpt = True, id_column: IdColOpt = "id",
          text_column: TextColOpt = "text", image_column: ImageColOpt = "image",
          label_column: LabelColOpt = "label", vector_column: VectorColOpt = "vector",
          ids: IdsOpt = None, image_root: ImageRootOpt = None, split: SplitOpt = None,
          all_captions: AllCaptionsOpt = False, pool: PoolOpt = "local") -> None:
    """Score genir, genir+rerank and flat k-NN: on a source (its benchmark queries, or its
    labels / captions) with a saved --index, on a bundled task, or on a universal task
    (--task) in its own pool and in the global pool."""
    if (task is None) == (universal_task is None):
        _fail("name a source or bundled task (genir eval fashion-mnist) or a universal task "
              "(genir eval --task text_to_image), not both")
    plugin = _plugin_for(task if task is not None else "universal")
    if plugin is not None:
        plugin.eval(task, universal_task, index_dir=index_dir, json_out=json_out, quick=quick,
                    num_queries=num_queries_set, steps=steps, limit=limit, beam_size=beam_size,
                    tokenizer=tokenizer, data_dir=data_dir, tune_tower=tune_tower,
                    cache_dir=cache_dir, progress=progress)
        return
    if task is None:
        _fail("universal tasks need the experiments (the genir_experiments package)")
    _eval_source(task, index_dir=index_dir, json_out=json_out, num_queries=num_queries_set,
                 beam_size=beam_size, progress=progress,
                 source_args=(id_column, text_column, image_column, label_column,
                              vector_column, ids, image_root, split, all_captions, pool))


def _eval_source(spec: str, *, index_dir: Path | None, json_out: Path | None,
                 num_queries: int | None, beam_size: int | None, progress: bool,
                 source_args: tuple) -> None:
    from genir.data.corpus import MissingDataError
    from genir.pipeline import evaluate_source, format_result

    source = _open_source(spec, *source_args)
    if index_dir is None:
        _fail(f"give the index to evaluate: genir build {spec} --out DIR, then "
              f"genir eval {spec} --index DIR")
    try:
        result = evaluate_source(source, index_dir, num_queries=num_queries,
                                 beam_size=beam_size, progress=progress)
    except (MissingDataError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(format_result(result))
    if json_out is not None:
        _write_json(json_out, result.to_dict())


@app.command()
def serve(index_dir: Annotated[Path, typer.Argument(help="a folder written by genir build")],
          host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
          read_only: Annotated[bool, typer.Option("--read-only", help="refuse adds and "
                                                  "removes; take no writer lock")] = False,
          log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info") -> None:
    """Serve an index over HTTP: web page at /, API docs at /docs."""
    try:
        import uvicorn

        from genir.service.app import create_app
    except ImportError as exc:
        _fail(f"the service needs the 'serve' extra: pip install 'genir[serve]' ({exc})")
    from genir.store import IndexLockedError, StoreCorruptError

    try:
        application = create_app(index_dir, writable=not read_only)
    except (FileNotFoundError, ValueError, IndexLockedError, StoreCorruptError) as exc:
        _fail(str(exc))
    typer.echo(f"genir: serving {index_dir} on http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(application, host=host, port=port, log_level=log_level)


@app.command("compile")
def compile_(layers: Annotated[list[int] | None, typer.Option(
        "--layers", min=1, help="decoder depths to compile for (repeat; default: the "
        "default decoder's)")] = None) -> None:
    """Compile the search's kernels into numba's on-disk cache, so that a first search
    answers without compiling (`make install` runs it)."""
    from genir.warmup import compile_kernels

    seconds = compile_kernels(num_layers=layers) if layers else compile_kernels()
    typer.echo(f"search kernels compiled (or loaded from numba's cache) in {seconds:.1f} s")


def _load_plugins() -> list[Any]:
    """Plugins registered under the `genir.plugins` entry point (our experiments register
    demo, ablate and the bundled tasks): each gives commands, task names, build and eval."""
    from importlib.metadata import entry_points

    plugins = []
    for point in entry_points(group="genir.plugins"):
        try:
            plugins.append(point.load()())
        except ImportError as exc:   # a plugin whose package is gone: the library still runs
            typer.secho(f"genir: plugin {point.name!r} not loaded ({exc})", err=True)
    return plugins


def _plugin_for(task: str) -> Any:
    return next((p for p in PLUGINS if task in p.tasks), None)


PLUGINS = _load_plugins()
for _plugin in PLUGINS:
    for _name, _command in _plugin.commands:
        app.command(_name)(_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
