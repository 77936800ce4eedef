"""The statistics pass split into shards: run by worker processes or on a Dask cluster, then merged.

The data is cut into contiguous shards whose boundaries fall on whole batches, so every
shard sees exactly the batches the single pass would. Each shard is measured by its own
process, with its own onnxruntime session, and gives a `StatisticsPass`; merging them in
order (moments by Chan's formula, Gram matrices by addition, reference outputs by joining
the shard files) gives the single pass's result up to float rounding. Shards travel as a
`ShardJob`: paths and small arrays only, so the same function runs in a local process
pool or on any Dask worker that can read the model, the data and the scratch directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import numpy as np

from .data import Dataset
from .errors import InputError
from .runtime import Shard, StatisticsPass
from .scratch import directory as scratch_directory
from .session import RuntimeOptions


@dataclass
class ShardJob:
    """What one worker measures: samples [start, stop) of `data` through `model`."""

    model: str
    data: object  # a path, or {input: array} (only this shard's rows), as load_data accepts
    labels: str | None
    start: int
    stop: int
    calibration: np.ndarray | None  # this shard's part of the routing mask
    batch_size: int
    options: RuntimeOptions
    grams: bool = False
    mask: str | None = None
    shard: Shard = field(default_factory=Shard)  # where the shard starts in the whole data, and its routing
    rows: np.ndarray | None = None  # the samples of `data` this shard measures (a cross-fitting fold's), else [start, stop)


def shard_bounds(n_samples: int, shards: int, batch: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of about equal size, cut at multiples of `batch`."""
    n_batches = -(-n_samples // batch)
    shards = max(1, min(shards, n_batches))
    edges = [round(i * n_batches / shards) * batch for i in range(shards + 1)]
    edges[-1] = n_samples
    return [(a, min(b, n_samples)) for a, b in zip(edges[:-1], edges[1:]) if a < min(b, n_samples)]


def run_shard(job: ShardJob):
    """Measure one shard (in a worker process): returns its StatisticsPass and the runs it made."""
    from .data import load_data
    from .graph import GraphIndex
    from .groups import find_groups
    from .modelio import load_model
    from .runtime import collect_statistics

    model = load_model(job.model)
    data = load_data(job.data, model, labels_key=job.labels)
    if job.rows is not None:
        data = data.subset(job.rows)
    elif (job.start, job.stop) != (0, data.n_samples):
        data = _rows(data, job.start, job.stop)
    index = GraphIndex(model)
    groups = find_groups(model, index)
    options = replace(job.options, runs=type(job.options.runs)())
    result = collect_statistics(model, groups, data, batch_size=job.batch_size, options=options, index=index,
                                calibration=job.calibration, grams=job.grams, mask=job.mask, shard=job.shard)
    if result.reference is not None:
        result.reference.release()  # the files now belong to the copy sent back to the caller
    return result, dict(options.runs)


def _rows(data: Dataset, start: int, stop: int) -> Dataset:
    # subset keeps the inputs' batch axes and constant inputs
    return data.subset(np.arange(start, stop))


def portable_data(data, dataset: Dataset):
    """`data` as a worker can load it again: a path, or the arrays themselves."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).resolve())
    if isinstance(data, Mapping):
        return {k: np.asarray(v) for k, v in data.items()}
    if isinstance(data, np.ndarray):
        return {"arr_0": data}
    if isinstance(data, Dataset) and data.arrays is not None:
        arrays = dict(data.arrays)
        if data.labels is not None:
            arrays["labels"] = data.labels
        return arrays
    raise InputError("workers load the data themselves: give it as a path or as arrays, not a streamed Dataset")


def threads_per_worker(options: RuntimeOptions, workers: int) -> int:
    """The cores (or --threads) shared among the worker processes, at least one each."""
    total = options.threads or os.cpu_count() or 1
    return max(1, total // workers)


def collect_statistics_sharded(model, data, dataset: Dataset, *, batch_size: int, options: RuntimeOptions,
                               calibration: np.ndarray | None, grams: bool = False, mask: str | None = None,
                               labels: str | None = None, scratch: str | None = None, console=None,
                               rows: np.ndarray | None = None):
    """The statistics pass over `dataset` in `options.workers` shards, merged; same result as `collect_statistics`.

    `model` is the model's path (or a ModelProto, written to a temporary file for the
    workers); `data` what `dataset` was loaded from. With `options.cluster` (a Dask
    `distributed.Client` or a scheduler address), the shards run there instead of in local
    processes; its workers must see the same paths (a shared filesystem). With `rows` (sorted sample
    indices of `data`; `dataset` is then their subset), only those samples are measured, and every
    one's outputs are kept (a cross-fitting fold).
    """
    routed = (calibration is not None and not calibration.all()) or rows is not None
    source = portable_data(data, dataset)
    cluster = options.cluster
    client = dask_client(cluster) if cluster is not None else None
    try:
        workers = options.workers
        if client is not None and workers <= 1:  # one shard per Dask worker by default
            workers = max(1, len(client.scheduler_info().get("workers", {})))
        bounds = shard_bounds(dataset.n_samples, workers, dataset.batch_size(batch_size))
        # the workers' own options: no cluster to pickle, and (in local processes) their share of the threads
        shared = replace(options, workers=1, cluster=None, runs=type(options.runs)())
        if client is None:
            shared = replace(shared, threads=threads_per_worker(options, len(bounds)))
        # the workers' reference files go where this process can read them after the worker is gone (a worker's
        # own scratch directory goes with it)
        template = ShardJob("", None, labels, 0, 0, calibration, batch_size, shared, grams, mask,
                            Shard(0, routed, scratch if scratch is not None else scratch_directory()))
        if console is not None:
            where = "on the Dask cluster" if client is not None else "worker processes"
            console.log(f"measuring {dataset.n_samples} samples in {len(bounds)} shards ({where})")
        results = _map(model, source, bounds, template, client, rows)
    finally:
        if client is not None and client is not cluster:
            client.close()
    passes = []
    for result, runs in results:
        options.runs.update(runs)
        if result.reference is not None:
            result.reference.adopt()
        passes.append(result)
    return reduce(StatisticsPass.merge, passes)


def _map(model, source, bounds: list[tuple[int, int]], template: ShardJob, client, rows=None) -> list:
    """Run a job per shard of `bounds` (like `template`, with its rows) and gather their results in order;
    with `rows`, the bounds are positions in `rows`, the samples measured."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-model-", dir=scratch_directory()) as tmp:
        model_path = _model_file(model, tmp)
        jobs = []
        for start, stop in bounds:
            shard_data, first, last, picked = source, start, stop, None
            if rows is not None:
                picked = rows[start:stop]
            if isinstance(source, dict):  # send each worker its own rows only
                shard_data = {k: v[start:stop] if picked is None else v[picked] for k, v in source.items()}
                first, last, picked = 0, stop - start, None
            calibration = None if template.calibration is None else template.calibration[start:stop]
            jobs.append(replace(template, model=model_path, data=shard_data, start=first, stop=last,
                                calibration=calibration, shard=replace(template.shard, offset=start), rows=picked))
        if client is not None:
            # pure=False: two jobs that look alike are still two shards to run
            return client.gather(client.map(run_shard, jobs, pure=False))
        return _run_in_processes(jobs)


def _model_file(model, directory: str) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model).resolve())
    import onnx

    from .modelio import EXTERNAL_DATA_ABOVE

    path = Path(directory) / "model.onnx"
    external = model.ByteSize() >= EXTERNAL_DATA_ABOVE
    onnx.save_model(model, str(path), save_as_external_data=external, location="model.onnx.data")
    return str(path)


def _run_in_processes(jobs: list[ShardJob]) -> list:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if len(jobs) == 1:
        return [run_shard(jobs[0])]
    # spawn, not fork: the parent may hold onnxruntime and BLAS thread pools that a forked child
    # would inherit in an undefined state.
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_shard, jobs))


def dask_client(cluster):
    """A Dask client for `cluster`: a Client as given, or a scheduler address to connect to."""
    try:
        from distributed import Client
    except ImportError:
        raise InputError("the cluster option needs Dask distributed: pip install 'onnxprune[cluster]'") from None
    if isinstance(cluster, Client):
        return cluster
    try:
        return Client(str(cluster))  # waits for distributed.comm.timeouts.connect (Dask's config)
    except OSError as e:
        raise InputError(f"cannot reach the Dask scheduler at {cluster}: {str(e).splitlines()[0]}") from None

