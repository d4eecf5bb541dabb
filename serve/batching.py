"""Requests for the same (student, steps) batched together on one compute thread.

A batch never fails a request for another request's input: when a batch raises, each of its
jobs is run again on its own, so only the job that fails alone gets the error.

Results of one (image, seed, student, steps) are identical whatever else shares the batch up to
the floating-point differences of batched kernels (a few 1/255 in the PNGs on CPU); they are
bit-identical only for the same batch composition.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from serve.metrics import ServeMetrics
from serve.pipeline import Pipeline, encode_png, ply_bytes


@dataclass
class Job:
    image: torch.Tensor
    seed: int
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Queue:
    jobs: list = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Batcher:
    """One queue and drain task per (event loop, pipeline, steps); one compute thread for all."""

    def __init__(self, max_batch: int, max_wait_ms: float, metrics: ServeMetrics, on_batch=None):
        """``on_batch((student, steps), ms, n)`` hears each batch's compute time."""
        self.max_batch, self.max_wait_ms, self.metrics = max_batch, max_wait_ms, metrics
        self.on_batch = on_batch
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.queues: dict[tuple[int, int, int], _Queue] = {}
        self.lock = threading.Lock()
        self.pending = 0  # jobs queued or running, over all queues

    async def submit(self, pipe: Pipeline, steps: int, image: torch.Tensor, seed: int) -> dict:
        loop = asyncio.get_running_loop()
        # a queue's event and task belong to the loop that made them, and a test client may run
        # each request in a fresh loop: one queue per loop as well
        key = (id(loop), id(pipe), steps)
        job = Job(image, seed, loop.create_future())
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue()
            loop.create_task(self._drain(q, pipe, steps))
        with self.lock:
            self.pending += 1
        q.jobs.append(job)
        q.event.set()
        try:
            return await job.future
        finally:
            with self.lock:
                self.pending -= 1

    async def _drain(self, q: _Queue, pipe: Pipeline, steps: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await q.event.wait()
            if len(q.jobs) < self.max_batch and self.max_wait_ms > 0:
                await asyncio.sleep(self.max_wait_ms / 1000)
            batch, q.jobs = q.jobs[: self.max_batch], q.jobs[self.max_batch :]
            if not q.jobs:
                q.event.clear()
            batch = [j for j in batch if not j.future.done()]  # a client gone meanwhile
            if not batch:
                continue
            try:
                res = await loop.run_in_executor(self.compute, self._run, pipe, steps, batch)
            except Exception:  # noqa: BLE001  (one job's input may be the cause: run each alone)
                self.metrics.retried.inc()
                for job in batch:
                    try:
                        r = await loop.run_in_executor(self.compute, self._run, pipe, steps, [job])
                        _settle(job, result=r[0])
                    except Exception as e:  # noqa: BLE001  (this job fails on its own)
                        _settle(job, error=e)
                continue
            for job, r in zip(batch, res):
                _settle(job, result=r)

    def _run(self, pipe: Pipeline, steps: int, batch: list[Job]) -> list[dict]:
        start = time.perf_counter()
        images = torch.stack([j.image for j in batch])
        views, g, tm = pipe(images, steps=steps, seed=[j.seed for j in batch])
        self.metrics.batches.inc()
        self.metrics.batched.inc(len(batch))
        self.metrics.observe("diffusion", tm.diffusion_ms)
        self.metrics.observe("reconstruction", tm.recon_ms)
        out = []
        for i in range(len(batch)):
            t0 = time.perf_counter()
            pngs = [base64.b64encode(encode_png(v)).decode() for v in views[i]]
            ply = base64.b64encode(ply_bytes(g.map(lambda t, i=i: t[i]))).decode()
            enc_ms = (time.perf_counter() - t0) * 1000
            self.metrics.observe("encode", enc_ms)
            out.append(
                {
                    "views_png": pngs,
                    "ply": ply,
                    "timings_ms": {
                        "diffusion": tm.diffusion_ms,
                        "reconstruction": tm.recon_ms,
                        "encode": enc_ms,
                        "batch_size": len(batch),
                        "queue": (start - batch[i].submitted) * 1000,
                    },
                }
            )
        compute_ms = (time.perf_counter() - start) * 1000
        for r in out:
            r["timings_ms"]["compute"] = compute_ms
        if self.on_batch is not None:
            self.on_batch((pipe.name, steps), compute_ms, len(batch))
        return out


def _settle(job: Job, result=None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
